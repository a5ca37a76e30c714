"""Where the CPU goes: per-process CPU time for `pass` executes and pipelined comm echoes.

    python -m benchmarks.cpu_split [--kernel relaykernel] [-n 1000]

Reads psutil CPU times (user + system, all threads) of the client (this
process), the launched process and each of its descendants before and after
the workload.  With relaykernel the launched process is the supervisor and the
children are the active worker and the standby one.  This is the profile
behind the benchmark README's notes on the comm targets.
"""

from __future__ import annotations

import argparse
import time

import psutil

from . import harness, measures


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _split(procs: dict[str, psutil.Process], work) -> dict[str, float]:
    before = {name: _cpu(p) for name, p in procs.items()}
    work()
    return {name: _cpu(p) - before[name] for name, p in procs.items()}


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
        rate: list[float] = []
        rows.append(("pipelined echo", 10 * a.n, _split(procs, lambda: rate.append(echo.pipelined(10 * a.n, 256)))))
        print(f"kernel {a.kernel}; pipelined echoes: {rate[0]:,.0f}/s\n")
        print("| per | " + " | ".join(procs) + " |")
        print("|---|" + "---|" * len(procs))
        for label, n, spent in rows:
            print(f"| {label} (µs) | " + " | ".join(f"{spent[p] / n * 1e6:.0f}" for p in procs) + " |")
    finally:
        harness.stop_kernel(k)
        specs.cleanup()


if __name__ == "__main__":
    main()
