"""Markdown output: the machine header and the results table.

Figures are meaningless without the machine and versions they came from, so
the header is part of every report.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import psutil
import zmq

from .stats import Cell, Row


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ver(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def machine_header(kernels: dict[str, str], specs_info: dict[str, str]) -> str:
    """Machine, interpreter, package versions and what each column ran."""
    phys = psutil.cpu_count(logical=False)
    mem = psutil.virtual_memory().total / 2**30
    lines = [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- cpu: {_cpu_model()}, {os.cpu_count()} logical cores"
        + (f" ({phys} physical)" if phys else "")
        + f", {mem:.1f} GiB RAM",
        f"- os: {platform.platform()}",
        f"- python: {sys.version.split()[0]} ({sys.executable})",
        "- packages: "
        + ", ".join(
            f"{p} {_ver(p)}" for p in ("pyzmq", "jupyter_client", "ipykernel", "relaykernel")
        )
        + f", libzmq {zmq.zmq_version()}",
    ]
    for lb, name in kernels.items():
        lines.append(f"- column `{lb}`: kernelspec `{name}` — {specs_info.get(lb, '')}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(c: Cell, scale: float) -> tuple[str, str]:
    if not c.ok:
        note = c.note or "not run"
        if not note.startswith(("n/a", "—")):
            note = f"n/a ({note})"
        return note.replace("|", "\\|"), "—"
    p99 = c.p99
    return _fmt(c.median * scale), _fmt(p99 * scale if p99 is not None else None)


def table(rows: list[Row], labels: list[str]) -> str:
    """measurement | subject med | p99 | baseline med | p99 | ratio | [extra cols] | target."""
    subj, base, extra = labels[0], labels[1], labels[2:]
    head = [
        "measurement",
        f"{subj} median",
        f"{subj} p99",
        f"{base} median",
        f"{base} p99",
        f"ratio {subj}/{base}",
    ]
    for lb in extra:
        head += [f"{lb} median", f"{lb} p99"]
    head.append("target")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cs = [r.cells.get(lb, Cell(note="not run")) for lb in labels]
        vals = []
        for c in cs[:2]:
            vals += _cell(c, r.scale)
        ratio = "—"
        if cs[0].ok and cs[1].ok and cs[1].median:
            ratio = f"{cs[0].median / cs[1].median:.2f}x"
        vals.append(ratio)
        for c in cs[2:]:
            vals += _cell(c, r.scale)
        arrow = "↑" if r.higher_is_better else "↓"
        out.append(
            "| " + " | ".join([f"{r.name} ({r.unit}, {arrow} better)"] + vals + [r.target]) + " |"
        )
    return "\n".join(out)


def floor_notes(rows: list[Row], floor: Cell | None, subject: str) -> list[str]:
    """How far the subject's request round trips are from the bare pyzmq hop."""
    if floor is None or not floor.ok:
        return []
    notes = []
    # each kernel's echo against the bare transport of its topology, same size class
    bare = [r for r in rows if r.name.startswith("bare pyzmq ") and " rt, " in r.name]
    for b in bare:
        size = " ".join(b.name.split()[2:4])  # "bare pyzmq 50 MB rt, ..." -> "50 MB"
        prefix = "comm echo rt sequential" if size.endswith(" B") else f"comm {size} buffer round trip"
        for r in rows:
            if not r.name.startswith(prefix):
                continue
            for lb, cell in r.cells.items():
                relay = lb == subject
                if ("relay" in b.name) != relay:
                    continue
                ref = b.cells.get(subject)  # bare figures sit in the first column
                if cell.ok and ref is not None and ref.ok:
                    notes.append(f"- {lb} {prefix} median / bare pyzmq {size} "
                                 f"{'relay' if relay else 'direct'} path median = "
                                 f"{cell.median / ref.median:.2f}x (1.00x: nothing but the transport)")
    for r in rows:
        if r.name.startswith("CPU of the launched process"):
            c = r.cells.get(subject)
            if c is not None and c.ok:
                notes.append(
                    f"- {subject} supervisor CPU per relayed message (CPU per `pass` execute over "
                    f"the 3 messages it relays: request, execute_input, reply; the busy/idle it "
                    f"makes itself count as cost) / bare pyzmq hop median = "
                    f"{c.median / 3 / floor.median:.1f}x (target ≤ 3x)"
                )
        if r.name.startswith(("execute rt `pass`", "comm echo rt")):
            c = r.cells.get(subject)
            if c is not None and c.ok:
                notes.append(
                    f"- {subject} {r.name.split(' (')[0]} median / bare pyzmq hop "
                    f"median = {c.median / floor.median:.1f}x (target ≤ 3x)"
                )
    return notes


def process_table(readings: list) -> str:
    """Memory per process: ``(when, kernel label, [ProcMemory...])`` readings, in MB."""
    out = [
        ("Memory per process (RSS counts shared pages in full in every process; PSS shares "
         "them out among the processes that map them; USS is the process's own):"),
        "",
        "| reading | kernel | process | RSS (MB) | PSS (MB) | USS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for when, label, procs in readings:
        for p in procs:
            out.append(f"| {when} | {label} | {p.role} | {_fmt(p.rss / 1e6)} | {_fmt(p.pss / 1e6)} "
                       f"| {_fmt(p.uss / 1e6)} |")
        out.append(f"| {when} | {label} | **total ({len(procs)} processes)** "
                   f"| {_fmt(sum(p.rss for p in procs) / 1e6)} | {_fmt(sum(p.pss for p in procs) / 1e6)} "
                   f"| {_fmt(sum(p.uss for p in procs) / 1e6)} |")
    return "\n".join(out)
