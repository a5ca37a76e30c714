"""``python -m benchmarks``: relaykernel vs ipykernel, interleaved, one table.

Usage::

    python -m benchmarks                       # relaykernel vs ipykernel, full counts
    python -m benchmarks --quick               # smoke run (< 60 s), for CI
    python -m benchmarks --kernels python3,python3 --quick   # validate the harness
    python -m benchmarks --only exec,comm --out benchmarks/results/run.md
    python -m benchmarks --only snapshots      # issue 18: crash with the state kept, overheads
    python -m benchmarks --only notebook       # issue 18: a realistic notebook, snapshots on/off

The first kernel is the subject, the second the baseline; ``ipykernel`` /
``python3`` and ``relaykernel`` use kernelspecs the harness writes itself
(this interpreter), any other name is looked up on the Jupyter path.  If a
kernelspec named ``xpython`` exists it is added as an extra column.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from . import measures as M
from . import notebook as NB
from .harness import (
    RELAY_NO_SNAPSHOTS,
    BenchError,
    Kernel,
    kernelspec_exists,
    make_context,
    start_kernel,
    stop_kernel,
    write_kernelspecs,
)
from .report import floor_notes, machine_header, process_table, table
from .stats import Cell, Row

MEASUREMENTS = ("floor", "startup", "memory", "exec", "output", "comm", "restart", "crash", "snapshots",
                "notebook")
DEFAULT_KERNELS = "relaykernel,ipykernel"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kernels",
        default=DEFAULT_KERNELS,
        help="subject,baseline kernelspec names (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="reduced counts, total < 60 s")
    p.add_argument(
        "--only", default="", help="comma-separated subset of: " + ",".join(MEASUREMENTS)
    )
    p.add_argument("--out", type=Path, help="also write the markdown report to this file")
    p.add_argument(
        "--no-xpython",
        action="store_true",
        help="do not add an xeus-python column even if 'xpython' exists",
    )
    a = p.parse_args(argv)
    a.kernel_names = [k.strip() for k in a.kernels.split(",") if k.strip()]
    if len(a.kernel_names) != 2:
        p.error("--kernels needs exactly two names: subject,baseline")
    a.only_set = set(MEASUREMENTS) if not a.only else {x.strip() for x in a.only.split(",")}
    bad = a.only_set - set(MEASUREMENTS)
    if bad:
        p.error(f"unknown measurement(s): {', '.join(sorted(bad))}")
    return a


def column_labels(names: list[str]) -> dict[str, str]:
    """label -> kernelspec name; duplicate names (A/A validation runs) get #1, #2."""
    out: dict[str, str] = {}
    for i, n in enumerate(names):
        lb = n if names.count(n) == 1 else f"{n}#{i + 1}"
        out[lb] = n
    return out


def describe_spec(name: str) -> str:
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return f"not found ({e.__class__.__name__})"
    prov = (
        (spec.metadata or {})
        .get("kernel_provisioner", {})
        .get("provisioner_name", "local-provisioner")
    )
    return f"argv `{' '.join(spec.argv)}`, provisioner `{prov}`"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = M.Config.quick() if a.quick else M.Config()
    specs_dir = write_kernelspecs()  # noqa: F841 - kept alive for the run
    specs = column_labels(a.kernel_names)
    if not a.no_xpython and "xpython" not in a.kernel_names and kernelspec_exists("xpython"):
        specs["xpython"] = "xpython"
    labels = list(specs)
    ctx = make_context()
    rows: list[Row] = []
    floor_cell: Cell | None = None
    t_start = time.perf_counter()

    if "floor" in a.only_set:
        log("floor: bare pyzmq DEALER/ROUTER round trip")
        floor_cell = M.floor(cfg.floor_n, cfg.timeout)
        rows.append(
            Row(
                f"bare pyzmq DEALER/ROUTER hop rt (n={cfg.floor_n})",
                "ms",
                {labels[0]: floor_cell, **{lb: Cell(note="— (no kernel)") for lb in labels[1:]}},
                "floor",
                1e3,
            )
        )
        no_kernel = {lb: Cell(note="— (no kernel)") for lb in labels[1:]}
        for size, reps in ((M.ECHO_FLOOR_BYTES, cfg.comm_seq_n), (cfg.buf_sizes[-1], cfg.buf_reps[-1])):
            what = M.size_label(size)
            log(f"floor: bare pyzmq {what} round trips, direct and through a relay process, alternating")
            direct, relayed = M.floor_paths(size, reps, cfg.timeout)
            rows.append(Row(f"bare pyzmq {what} rt, direct over tcp (ipykernel's path)", "ms",
                            {labels[0]: direct, **no_kernel}, "floor", 1e3))
            rows.append(Row(f"bare pyzmq {what} rt, tcp + relay process + ipc (relaykernel's path)",
                            "ms", {labels[0]: relayed, **no_kernel}, "floor", 1e3))

    if "startup" in a.only_set:
        log(f"startup: {cfg.startups} launches per kernel, alternating")
        rows += M.startup(specs, ctx, cfg)

    long_lived = a.only_set & {"memory", "exec", "output", "comm", "restart", "crash"}
    kernels: dict[str, Kernel] = {}
    failed: dict[str, str] = {}
    try:
        if long_lived:
            for lb, name in specs.items():
                log(f"starting {lb} ({name})")
                try:
                    kernels[lb] = start_kernel(lb, name, ctx, cfg.timeout)
                except BenchError as e:
                    failed[lb] = f"start failed: {e}"
                    log(f"  {lb}: {e}")
            b = M.Bench({lb: k for lb, k in kernels.items()}, cfg)

            def run(name: str, fn) -> None:
                if name not in a.only_set or not b.kernels:
                    return
                log(name)
                new = fn()
                for r in new:  # columns whose kernel never started
                    for lb, why in failed.items():
                        r.cells[lb] = Cell(note=why)
                rows.extend(new)

            run("memory", lambda: M.memory(b, "idle after start", "≤ 1.5x"))
            run("exec", lambda: M.execute_rt(b))
            run("output", lambda: M.output(b))
            run("comm", lambda: M.comms(b))
            if {"exec", "output", "comm"} & a.only_set:
                # at rest: both kernels idle for the same settle time first (relaykernel's
                # supervisor returns freed heap after 3 s without large buffers)
                time.sleep(M.SETTLE_BEFORE_RSS)
                run("memory", lambda: M.memory(b, f"{M.SETTLE_BEFORE_RSS:g} s after workload"))
            if "memory" in a.only_set and b.kernels:
                log(f"memory: {M.IMPORT_CELL!r} in every kernel")
                M.import_workload(b)
            run("memory", lambda: M.memory(b, f"after `{M.IMPORT_CELL}`", "≤ 1.25x"))
            run("restart", lambda: M.restart(b, ctx))
            run("crash", lambda: M.crash(b))  # last: a baseline kernel may die here
    finally:
        for k in kernels.values():
            stop_kernel(k)
    snapshot_rows: list[Row] = []
    snapshot_labels = {labels[0]: specs[labels[0]], f"{labels[0]}, snapshots off": RELAY_NO_SNAPSHOTS,
                       labels[1]: specs[labels[1]]}
    try:
        if "snapshots" in a.only_set and specs[labels[0]] == "relaykernel":
            log("snapshots: relaykernel with and without, and the baseline, kernels of their own")
            snapshot_rows = M.snapshots(ctx, cfg, snapshot_labels)
        if "notebook" in a.only_set and specs[labels[0]] == "relaykernel":
            log("notebook: a realistic notebook, snapshots on, off, and the baseline (benchmarks/notebook.py)")
            snapshot_rows += NB.notebook_rows(ctx, cfg, snapshot_labels)
    finally:
        ctx.destroy(linger=0)

    header = machine_header(specs, {lb: describe_spec(n) for lb, n in specs.items()})
    mode = "quick" if a.quick else "full"
    notes = floor_notes(rows, floor_cell, labels[0])
    report = "\n".join(
        [
            f"## relaykernel benchmarks ({mode} run, {time.perf_counter() - t_start:.0f} s)",
            "",
            header,
            "",
            *([table(rows, labels), ""] if rows else []),
            *([process_table(M.PROCESS_READINGS), ""] if M.PROCESS_READINGS else []),
            *([("Snapshots (issue 18): relaykernel with them (the default), without "
               "(`--Supervisor.snapshots=False`), and the baseline:"), "",
               table(snapshot_rows, list(snapshot_labels)), ""] if snapshot_rows else []),
            (
                "Medians and p99 over interleaved runs (A B A B ...); every figure was validated "
                "before it was recorded, n/a cells say why one could not be."
            ),
            *([""] + notes if notes else []),
            "",
            "Config: " + json.dumps({k: v for k, v in vars(cfg).items()}),
        ]
    )
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report + "\n")
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
