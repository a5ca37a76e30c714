"""Which pages a cell copies after a snapshot, and how many it copies every time.

    python -m benchmarks.cow_pages [-n 30] [--rows 2000000]

Issue 18: after the worker forks its snapshot, every page the next cell writes is
copied (a copy-on-write fault).  This measures, from outside the worker (it reads
``/proc/WORKER/pagemap`` as root or as the kernel's user: bit 56, "mapped by this
process only"), the anonymous pages each cell wrote after a snapshot, for a loop
of five cells over a pandas frame, a 1.5 s pause before each (a snapshot is taken
in it).  It also reports the **hot set**: the pages written in each of the two
intervals before, and how much of the cell's copying falls in it.  A hot set that
covers much of every cell at a small size could be copied in idle time, right
after the fork, instead of in the cell (``MADV_POPULATE_WRITE``); the rest is the
data the cells rewrite, which only a snapshot that copies dirtied pages itself
(not a fork) would take out of the cells.

Nothing in the worker changes: reading another process's pagemap does not touch it.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time

import psutil

from .harness import Kernel, make_context, start_kernel, stop_kernel, write_kernelspecs

CELLS = ("x = 1", "df['c'] = df.a * 2", "y = df.c.sum()",
         "df.groupby((df.a * 10).astype(int)).b.mean()", "z = [i for i in range(1000)]")
_PRESENT, _EXCLUSIVE = 1 << 63, 1 << 56


def exclusive_pages(pid: int) -> set[int]:
    """Virtual page numbers of the writable anonymous pages only ``pid`` maps."""
    pages: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            path = fields[5] if len(fields) > 5 else ""
            if (path and not path.startswith("[")) or "w" not in fields[1]:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek((lo >> 12) * 8)
            data = pagemap.read(((hi - lo) >> 12) * 8)
            first = lo >> 12
            pages.update(first + i for i, (entry,) in enumerate(struct.iter_unpack("<Q", data))
                         if entry & _PRESENT and entry & _EXCLUSIVE)
    return pages


def _snapshot_of(worker: int) -> int | None:
    children = [c for c in psutil.Process(worker).children() if c.status() != psutil.STATUS_ZOMBIE]
    return children[0].pid if len(children) == 1 else None


def _wait_for_new_snapshot(worker: int, before: int | None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _snapshot_of(worker)
        if now is not None and now != before:
            return True
        time.sleep(0.05)
    return False


def run(k: Kernel, cells: int, rows: int) -> list[tuple[str, int, int, int]]:
    """Per cell after the first two: (cell, pages written, hot set size, written and hot)."""
    k.waiter.execute(f"import numpy as np, pandas as pd\n"
                     f"df = pd.DataFrame({{'a': np.random.rand({rows}), 'b': np.random.rand({rows})}})", 120)
    worker = int(k.waiter.execute("import os; os.getpid()", 30, want_result=True).result or 0)
    history: list[set[int]] = []
    rows_out = []
    for i in range(cells):
        before = _snapshot_of(worker)
        time.sleep(1.5)
        if not _wait_for_new_snapshot(worker, before):
            history.clear()  # no snapshot: the interval is not one of ours
            continue
        time.sleep(0.1)
        base = exclusive_pages(worker)
        cell = CELLS[i % len(CELLS)]
        k.waiter.execute(cell, 60)
        written = exclusive_pages(worker) - base
        if len(history) >= 2:
            hot = history[-1] & history[-2]
            rows_out.append((cell, len(written), len(hot), len(written & hot)))
        history.append(written)
    return rows_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cow_pages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=30, help="cells (default 30)")
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of the frame (default 2,000,000)")
    a = p.parse_args(argv)
    specs = write_kernelspecs()
    ctx = make_context()
    k = start_kernel("relaykernel", "relaykernel", ctx, 60)
    try:
        rows = run(k, a.n, a.rows)
    finally:
        stop_kernel(k)
        ctx.term()
        specs.cleanup()
    print("| cell | pages written after the snapshot (median, range) | hot set (pages) | of them hot |")
    print("|---|---|---|---|")
    for cell in CELLS:
        mine = [r for r in rows if r[0] == cell]
        if not mine:
            continue
        written = [r[1] for r in mine]
        cover = [r[3] / max(1, r[1]) for r in mine]
        print(f"| `{cell}` | {statistics.median(written):.0f} ({min(written)}-{max(written)}) | "
              f"{statistics.median(r[2] for r in mine):.0f} | {statistics.median(cover):.0%} "
              f"({min(cover):.0%}-{max(cover):.0%}) |")
    total = sum(r[1] for r in rows)
    hot = sum(r[3] for r in rows)
    print(f"\nall cells: {total} pages written after snapshots, {hot} of them hot ({hot / max(1, total):.0%});"
          f" {len(rows)} cells measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
