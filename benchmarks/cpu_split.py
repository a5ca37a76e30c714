"""Where the CPU goes: per-process CPU time and context switches for `pass`
executes, sequential comm echoes and pipelined comm echoes.

    python -m benchmarks.cpu_split [--kernel relaykernel] [-n 1000]

Reads psutil CPU times (user + system, all threads) and the context switches
of every thread (voluntary + involuntary, from /proc on Linux) of the client
(this process), the launched process and each of its descendants before and
after the workload.  With relaykernel the launched process is the supervisor
and the children are the active worker and the standby one.  Run it with
``--kernel ipykernel`` for the baseline.  This is the profile behind the
benchmark README's notes on the comm targets.
"""

from __future__ import annotations

import argparse
import os
import time

import psutil

from . import harness, measures


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _switches(p: psutil.Process) -> int:
    """Context switches of all the process's threads (0 where /proc has no tasks)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{p.pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{p.pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f
                             if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        except OSError:
            pass
    return total


def _split(procs: dict[str, psutil.Process], work) -> tuple[dict[str, float], dict[str, int]]:
    cpu = {name: _cpu(p) for name, p in procs.items()}
    sw = {name: _switches(p) for name, p in procs.items()}
    work()
    return ({name: _cpu(p) - cpu[name] for name, p in procs.items()},
            {name: _switches(p) - sw[name] for name, p in procs.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="relaykernel")
    ap.add_argument("-n", type=int, default=1000, help="executes; echoes are 10x this")
    a = ap.parse_args()
    specs = harness.write_kernelspecs()
    ctx = harness.make_context()
    k = harness.start_kernel(a.kernel, a.kernel, ctx, 60)
    try:
        time.sleep(2)  # the standby worker finishes importing
        launched = psutil.Process(k.pid)
        procs = {"client": psutil.Process(), "launched": launched}
        for child in launched.children(recursive=True):
            role = "resource tracker" if "resource_tracker" in " ".join(child.cmdline()) else "child"
            procs[f"{role} {child.pid}"] = child
        for _ in range(100):
            k.waiter.execute("pass", 30)
        rows = [("`pass` execute", a.n, _split(procs, lambda: [k.waiter.execute("pass", 30) for _ in range(a.n)]))]
        echo = measures.Echo(k, 60)
        rows.append(("sequential echo", a.n, _split(procs, lambda: [echo.roundtrip(i) for i in range(a.n)])))
        rate: list[float] = []
        rows.append(("pipelined echo", 10 * a.n, _split(procs, lambda: rate.append(echo.pipelined(10 * a.n, 256)))))
        print(f"kernel {a.kernel}; pipelined echoes: {rate[0]:,.0f}/s\n")
        print("| per | " + " | ".join(procs) + " |")
        print("|---|" + "---|" * len(procs))
        for label, n, (spent, _) in rows:
            print(f"| {label}: CPU (µs) | " + " | ".join(f"{spent[p] / n * 1e6:.0f}" for p in procs) + " |")
        for label, n, (_, switched) in rows:
            print(f"| {label}: context switches | " + " | ".join(f"{switched[p] / n:.1f}" for p in procs) + " |")
    finally:
        harness.stop_kernel(k)
        specs.cleanup()


if __name__ == "__main__":
    main()
