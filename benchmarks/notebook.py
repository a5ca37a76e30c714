"""A realistic notebook with snapshots on and off: issue 18's overhead targets.

``python -m benchmarks.notebook`` (or ``python -m benchmarks --only notebook``):
relaykernel with snapshots (the default), relaykernel with
``--Supervisor.snapshots=False`` and ipykernel each run the same notebook of
data work, a fresh kernel per run, the runs interleaved (on, off, ipykernel,
on, off, ...).  The notebook (:data:`CELLS`): numpy and pandas imported, a
sales table of a million rows built, merged, grouped, pivoted, filtered,
features derived and linear models fitted (``numpy.linalg.lstsq``; no
scikit-learn here), a few dozen cells of 10 to 500 ms each.

Cells are sent one at a time with :data:`THINK` seconds between them, as a
person runs a notebook cell by cell: that quiet is when the worker forks its
snapshot (relaykernel/worker/snapshot.py takes one 50 ms after a cell, once the
faults the previous one made the cells pay are 2.5 % of the cells' time since it,
and its whole cost 2.5 % of the session's: 2 to 4 snapshots here, after the cells
that ran longest), and the cells after it pay a fault for each page they write.  (Run All sends the cells back
to back: the worker, never idle, takes no snapshot until the end.)

Reported, the targets being ElasticNotebook's figures for itself:

* runtime: the sum of the cells' times (send → idle; the think time is not
  counted), and its overhead against snapshots off, paired run by run
  (target ≤ 2.5 %); and the CPU time of the kernel's processes (user +
  system, reaped children included), which other load on the machine
  disturbs less than wall time: while the cells ran (their copy-on-write
  faults are there) and between them (the snapshots' forks and exits);
* what the overhead is made of: the worker's minor page faults while the cells
  ran (``/proc/PID/stat`` field ``minflt``: with snapshots on, the
  copy-on-write faults come on top of the fresh pages every run takes) and
  how many snapshots the worker took;
* the kernel's extra CPU over the whole session (cells and think time) against
  snapshots off, as a share of the session's time: the figure the snapshot
  policy bounds (relaykernel/worker/snapshot.py);
* memory: the peak of the kernel's whole process tree, PSS summed over its
  processes (supervisor, worker, snapshot, standby, fork server; shared pages
  shared out, so a snapshot counts by what it does not share), sampled every
  :data:`SAMPLE_EVERY` s, and its overhead against snapshots off (target ≤ 10 %);
  and the snapshot's own pages (USS) at their peak.

Every run is validated: each cell must reply ok, and the notebook's last cell
must give the same checksum in every kernel.

``--runs N`` sets the number of runs per kernel; the rounds alternate their
order (on, off, baseline, then baseline, off, on, ...) so that a drift of the
host's load lands on both sides of a pair.  The spread of the paired overheads
(quartiles and range over the runs) goes to stderr with the table;
``--no-baseline`` leaves ipykernel out (on against off is what the targets ask).
``--per-cell FILE`` appends each run's figures per cell (the tree's CPU, the worker's own
user and system CPU and minor faults from /proc/PID/stat, wall) and the worker's memory in
transparent huge pages at the end, as JSON lines: what a fault costs the worker itself,
apart from the other processes (worker/snapshot.py, FAULT_SECONDS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import zmq

from .harness import RELAY_NO_SNAPSHOTS, BenchError, Kernel, make_context, start_kernel, stop_kernel, write_kernelspecs
from .measures import Config, _settle_tree, _tree
from .stats import Cell, Row, percentile

#: Seconds between two cells (a person reading the output, typing the next).
THINK = 0.6
#: Seconds between two memory samples of a kernel's process tree.
SAMPLE_EVERY = 0.1
#: Runs per kernel (full / quick).
RUNS, QUICK_RUNS = 3, 1

CELLS = [
    "import numpy as np, pandas as pd",
    "rng = np.random.default_rng(18)\nN = 1_000_000",
    ("sales = pd.DataFrame({\n"
     "    'day': pd.Timestamp('2024-01-01') + pd.to_timedelta(rng.integers(0, 365, N), unit='D'),\n"
     "    'store': rng.integers(0, 200, N), 'item': rng.integers(0, 5000, N),\n"
     "    'units': rng.poisson(3, N), 'price': rng.gamma(2.0, 10.0, N).round(2)})"),
    "sales['revenue'] = sales.units * sales.price",
    "sales.head()",
    "sales.describe()",
    ("stores = pd.DataFrame({'store': np.arange(200), 'region': rng.choice(['north', 'south', 'east', 'west'], 200),\n"
     "                       'size_m2': rng.integers(200, 5000, 200)})"),
    "df = sales.merge(stores, on='store', how='left')",
    "by_region = df.groupby('region')['revenue'].agg(['sum', 'mean', 'count'])\nby_region",
    "daily = df.groupby('day')['revenue'].sum()",
    "weekly = daily.resample('W').sum()\nweekly.tail()",
    "rolling = daily.rolling(7).mean()\nrolling.describe()",
    "pivot = df.pivot_table(index='region', columns=df.day.dt.month, values='units', aggfunc='sum')\npivot",
    "top_items = df.groupby('item')['revenue'].sum().nlargest(20)\ntop_items",
    "df['month'] = df.day.dt.month\ndf['weekday'] = df.day.dt.dayofweek",
    "df['log_price'] = np.log1p(df.price)",
    "df = df[df.units > 0].copy()\nlen(df)",
    "df.revenue.sum()",
    "X = np.column_stack([np.ones(len(df)), df.log_price, df.size_m2 / 1000, df.weekday, df.month])",
    "y = df.units.to_numpy(dtype=float)",
    "coef, *_ = np.linalg.lstsq(X, y, rcond=None)\ncoef",
    "pred = X @ coef\nresid = y - pred\nfloat((resid ** 2).mean())",
    ("regions = df.region.to_numpy()\n"
     "fits = {r: np.linalg.lstsq(X[regions == r], y[regions == r], rcond=None)[0] for r in np.unique(regions)}"),
    "corr = df[['units', 'price', 'revenue', 'size_m2']].corr()\ncorr",
    "q = df.groupby(['region', 'weekday']).revenue.quantile(0.9).unstack()\nq",
    ("bands = pd.cut(df.price, [0, 5, 10, 20, 50, 1e9])\n"
     "df.groupby(bands, observed=True).units.sum()"),
    "sample = df.sample(50_000, random_state=1)\nsample.groupby('region').price.median()",
    "df['z'] = (df.revenue - df.revenue.mean()) / df.revenue.std()",
    "outliers = df[df.z.abs() > 4]\nlen(outliers)",
    "hist, edges = np.histogram(df.revenue, bins=50)\nhist[:10]",
    "df.sort_values('revenue', ascending=False).head(10)",
    "summary = {'rows': len(df), 'stores': df.store.nunique(), 'items': df['item'].nunique()}\nsummary",
    "del sample, outliers",
    # the checksum every kernel must agree on
    "round(float(coef.sum()) + float(df.revenue.sum()) + sum(summary.values()), 3)",
]


class TreeMemory(threading.Thread):
    """Samples a kernel's process tree every SAMPLE_EVERY s: the peak of the PSS
    summed over it, and of the largest snapshot's USS (a child of ``worker``); and
    the snapshots it saw (a snapshot lives ≥ 0.5 s: none is missed)."""

    def __init__(self, k: Kernel, worker: int) -> None:
        super().__init__(name="bench-tree-memory", daemon=True)
        self.k, self.worker = k, worker
        self.peak_pss = 0
        self.peak_snapshot_uss = 0
        self.samples = 0
        self.snapshots: set[int] = set()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY):
            with contextlib.suppress(BenchError):
                self._sample()

    def _sample(self) -> None:
        pss = 0
        for p in _tree(self.k):
            with contextlib.suppress(psutil.Error):
                m = p.memory_full_info()
                pss += m.pss
                if p.pid != self.worker and p.ppid() == self.worker:
                    self.peak_snapshot_uss = max(self.peak_snapshot_uss, m.uss)
                    self.snapshots.add(p.pid)
        self.peak_pss = max(self.peak_pss, pss)
        self.samples += 1

    def stop(self) -> None:
        self._done.set()
        self.join(5.0)


def tree_cpu(k: Kernel) -> float:
    """CPU seconds of the kernel's processes so far, their reaped children included."""
    total = 0.0
    for p in _tree(k):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def minflt(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (/proc/PID/stat field 10)."""
    return worker_stat(pid)[0]


_TICK = os.sysconf("SC_CLK_TCK")


def worker_stat(pid: int) -> tuple[int, float, float]:
    """Process ``pid``'s minor faults, user and system CPU seconds (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[7]), int(fields[11]) / _TICK, int(fields[12]) / _TICK
    except (OSError, ValueError, IndexError) as e:
        raise BenchError(f"no stat for {pid}: {e}") from None


def huge_pages(pid: int) -> int:
    """Bytes of process ``pid``'s anonymous memory mapped as transparent huge pages."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Run:
    """One run of the notebook on a fresh kernel (seconds, and the memory sampler)."""

    wall: float  # the cells' total time, send → idle
    cpu_cells: float  # CPU of the kernel's processes while the cells ran
    cpu_idle: float  # ... and in the think time between them
    session: float  # wall time of the whole notebook, think time included
    faults: int  # the worker's minor page faults while the cells ran
    memory: TreeMemory
    checksum: str
    #: per cell: (tree CPU, worker user CPU, worker system CPU, worker faults, wall) in it
    cells: list[tuple[float, float, float, int, float]]
    huge_at_end: int  # the worker's memory in transparent huge pages after the last cell


def run_notebook(label: str, name: str, ctx: zmq.Context, timeout: float) -> Run:
    k = start_kernel(label, name, ctx, timeout)
    try:
        _settle_tree(k, timeout)  # the standby and the fork server have started
        r = k.waiter.execute("__import__('os').getpid()", timeout, want_result=True, alive=k.alive)
        if not (r.result or "").isdigit():
            raise BenchError(f"getpid() gave {r.result!r}")
        time.sleep(THINK)
        sampler = TreeMemory(k, int(r.result or 0))
        sampler.start()
        worker = int(r.result or 0)
        start, session = tree_cpu(k), time.monotonic()
        wall = cpu_cells = 0.0
        faults = 0
        result = None
        per_cell: list[tuple[float, float, float, int, float]] = []
        try:
            for code in CELLS:
                before, (faulted, user, system) = tree_cpu(k), worker_stat(worker)
                r = k.waiter.execute(code, timeout, want_result=code is CELLS[-1], alive=k.alive)
                after = worker_stat(worker)
                faults += after[0] - faulted
                cpu_cells += tree_cpu(k) - before
                per_cell.append((tree_cpu(k) - before, after[1] - user, after[2] - system, after[0] - faulted,
                                 max(r.t_reply, r.t_idle or 0.0)))
                if r.reply.get("status") != "ok":
                    raise BenchError(f"{code.splitlines()[0][:40]!r}: {r.reply.get('ename')}: {r.reply.get('evalue')}")
                wall += max(r.t_reply, r.t_idle or 0.0)
                result = r.result
                time.sleep(THINK)
            cpu_idle = tree_cpu(k) - start - cpu_cells
            session = time.monotonic() - session
            huge = huge_pages(worker)
        finally:
            sampler.stop()
        return Run(wall, cpu_cells, cpu_idle, session, faults, sampler, str(result), per_cell, huge)
    finally:
        stop_kernel(k)


def notebook_rows(ctx: zmq.Context, cfg: Config, labels: dict[str, str], runs: int | None = None,
                  per_cell: str | None = None) -> list[Row]:
    """``labels``: column label → kernelspec, snapshots on first, then off, then the baseline.
    ``per_cell``: a file to write every run's per-cell figures to (JSON lines)."""
    order = list(labels)
    on, off = order[0], order[1]
    if runs is None:
        runs = QUICK_RUNS if cfg.crashes < 5 else RUNS
    names = ("wall", "cpu_cells", "cpu_idle", "peak", "faults", "snapshots", "cpu_session")
    cells: dict[str, dict[str, Cell]] = {m: {lb: Cell() for lb in order} for m in names}
    snap = {lb: Cell(note="— (no snapshot)") for lb in order}
    snap[on] = Cell()
    session: dict[str, list[float]] = {lb: [] for lb in order}
    checksums: dict[str, str] = {}
    for i in range(runs):
        for lb in (order if i % 2 == 0 else order[::-1]):  # drift lands on both sides of a pair
            if cells["wall"][lb].note:
                continue
            try:
                run = run_notebook(lb, labels[lb], ctx, cfg.timeout)
                if checksums.setdefault("first", run.checksum) != run.checksum:
                    raise BenchError(f"checksum {run.checksum} differs from {checksums['first']}")
            except BenchError as e:
                for by_label in cells.values():
                    by_label[lb].note = str(e)
                    by_label[lb].samples.clear()
                continue
            print(f"[bench notebook] {lb} run {i + 1}: {run.wall:.2f} s of cells, CPU {run.cpu_cells:.2f} s in "
                  f"them and {run.cpu_idle:.2f} s between, {run.faults} worker faults in them, "
                  f"{len(run.memory.snapshots)} snapshots, peak tree PSS {run.memory.peak_pss / 1e6:.0f} MB, "
                  f"snapshot USS {run.memory.peak_snapshot_uss / 1e6:.0f} MB ({run.memory.samples} samples)",
                  file=sys.stderr, flush=True)
            for m, v in (("wall", run.wall), ("cpu_cells", run.cpu_cells), ("cpu_idle", run.cpu_idle),
                         ("peak", run.memory.peak_pss), ("faults", run.faults),
                         ("snapshots", len(run.memory.snapshots)), ("cpu_session", run.cpu_cells + run.cpu_idle)):
                cells[m][lb].samples.append(v)
            session[lb].append(run.session)
            if per_cell:
                with open(per_cell, "a") as f:
                    f.write(json.dumps({"kernel": lb, "run": i + 1, "huge_at_end": run.huge_at_end,
                                        "cells": run.cells}) + "\n")
            if lb == on:
                snap[on].samples.append(run.memory.peak_snapshot_uss)

    def paired(by_label: dict[str, Cell], of: Callable[[float, float, int], float] | None = None) -> dict[str, Cell]:
        """Per run, on against the off run next to it (%): machine drift cancels out."""
        out = {lb: Cell(note="—") for lb in order}
        if by_label[on].ok and by_label[off].ok:
            pairs = list(zip(by_label[on].samples, by_label[off].samples))
            out[on] = Cell([of(a, b, j) if of else 100 * (a / b - 1) for j, (a, b) in enumerate(pairs)])
        else:
            out[on] = Cell(note=by_label[on].note or by_label[off].note or "not run")
        return out

    def share_of_session(a: float, b: float, j: int) -> float:
        return 100 * (a - b) / session[on][j]

    n = f"{len(CELLS)} cells, {THINK:g} s apart, n={runs}"
    rows = [
        Row(f"realistic notebook ({n}): the cells' total time", "s", cells["wall"], "", 1.0),
        Row("  its overhead against snapshots off, paired per run", "%", paired(cells["wall"]), "≤ 2.5 %", 1.0),
        Row("  CPU of the kernel's processes while the cells ran", "s", cells["cpu_cells"], "", 1.0),
        Row("  its overhead against snapshots off, paired per run", "%", paired(cells["cpu_cells"]), "≤ 2.5 %", 1.0),
        Row("  CPU of the kernel's processes between the cells", "s", cells["cpu_idle"], "", 1.0),
        Row("  extra CPU over the session against snapshots off, of the session's time", "%",
            paired(cells["cpu_session"], share_of_session), "≤ 2.5 %", 1.0),
        Row("  the worker's minor page faults while the cells ran", "k", cells["faults"], "", 1e-3),
        Row("  snapshots taken", "", cells["snapshots"], "", 1.0),
        Row("  peak memory of the kernel's process tree (PSS summed)", "MB", cells["peak"], "", 1e-6),
        Row("  its overhead against snapshots off, paired per run", "%", paired(cells["peak"]), "≤ 10 %", 1.0),
        Row("  the snapshot's own pages (USS) at their peak", "MB", snap, "", 1e-6),
    ]
    for row in rows:  # the spread, which the table's median and p99 do not show
        c = row.cells[on]
        if c.ok and len(c.samples) > 1:
            xs = [x * row.scale for x in c.samples]
            print(f"[bench notebook] {row.name.strip()}: median {statistics.median(xs):.3g} {row.unit}, quartiles "
                  f"{percentile(xs, 25):.3g}..{percentile(xs, 75):.3g}, range {min(xs):.3g}..{max(xs):.3g} "
                  f"(n={len(xs)}): {', '.join(f'{x:.3g}' for x in xs)}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from .report import table

    p = argparse.ArgumentParser(prog="python -m benchmarks.notebook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} run per kernel rather than {RUNS}")
    p.add_argument("--runs", type=int, default=None, help="runs per kernel (overrides --quick)")
    p.add_argument("--no-baseline", action="store_true", help="snapshots on and off only, no ipykernel")
    p.add_argument("--per-cell", metavar="FILE", help="append each run's per-cell figures (tree CPU, the worker's "
                   "user and system CPU, its faults, wall) to FILE as JSON lines")
    a = p.parse_args(argv)
    cfg = Config.quick() if a.quick else Config()
    specs_dir = write_kernelspecs()  # noqa: F841 - kept alive for the run
    ctx = make_context()
    labels = {"relaykernel": "relaykernel", "relaykernel, snapshots off": RELAY_NO_SNAPSHOTS, "ipykernel": "ipykernel"}
    if a.no_baseline:
        del labels["ipykernel"]
    try:
        rows = notebook_rows(ctx, cfg, labels, a.runs, a.per_cell)
    finally:
        ctx.destroy(linger=0)
    print(table(rows, list(labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
