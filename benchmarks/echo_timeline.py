"""Where one comm echo's time goes: a timeline across the client, supervisor and worker.

    python -m benchmarks.echo_timeline [-n 500] [--no-interleave] [--buffer-mb 50] [--also TREE]

Copies the ``relaykernel`` package into a temporary directory and adds
timestamps at the points below (each an exact source edit; the script stops
if one no longer applies, so it cannot silently measure nothing).  It starts
that instrumented copy and ipykernel, runs ``n`` sequential echoes on each,
interleaved as in ``python -m benchmarks``, and prints for relaykernel the
median time from the client's send to each point, and the step from the
previous one.  ``time.perf_counter_ns`` is CLOCK_MONOTONIC, one clock for
every process on the machine.

A timestamp is an append to a list (~0.1 us), dumped when the kernel shuts
down; the figures are therefore a little above an uninstrumented run's.  This
is the profile behind the benchmark README's notes on the sequential echo.

``--also TREE`` adds a third kernel to the interleave: the (uninstrumented)
relaykernel of another checkout, e.g. ``git archive HEAD | tar -x -C /tmp/base``,
so two versions of the code are compared echo by echo on the same host noise.
``--ctxsw`` also counts the voluntary and involuntary context switches of the
relaykernel processes (supervisor and its descendants, every thread; from
``/proc/PID/task/*/status``) over the measured echoes, per echo.
"""

from __future__ import annotations

import argparse
import bisect
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from . import harness
from .measures import Echo

TRACE_MODULE = '''
import os, time
_marks = []
_ns = time.perf_counter_ns
def mark(tag):
    _marks.append((tag, _ns()))
def dump(name):
    d = os.environ.get("RELAYKERNEL_TIMELINE_DIR")
    if d:
        with open(os.path.join(d, f"{name}-{os.getpid()}.txt"), "w") as f:
            f.writelines(f"{tag} {t}\\n" for tag, t in _marks)
'''

IMPORT = "from .._timeline import mark, dump\n"

#: (file, exact text, the text with a timestamp added); each must match once.
EDITS: list[tuple[str, str, str]] = [
    ("supervisor/loop.py", "from .. import pipes, wire\n", "from .. import pipes, wire\n" + IMPORT),
    ("supervisor/loop.py",
     "        events = dict(self.poller.poll(wait))\n",
     "        events = dict(self.poller.poll(wait))\n        mark('supervisor woke')\n"),
    ("supervisor/loop.py",
     "        for msg in self.verifier.waiting(sock, channel, budget):\n",
     ("        for msg in self.verifier.waiting(sock, channel, budget):\n"
      "            mark('supervisor verified the request')\n")),
    ("supervisor/flow.py", "from .. import wire\n", "from .. import wire\n" + IMPORT),
    ("supervisor/flow.py",
     "            if not sent:\n                return\n",
     ("            if not sent:\n                return\n"
      "            mark('supervisor sent it to the worker')\n")),
    ("supervisor/flow.py",
     '        self.announce(request)\n        if request.msg_type == "comm_msg"',
     ('        self.announce(request)\n        mark("supervisor published busy")\n'
      '        if request.msg_type == "comm_msg"')),
    ("supervisor/loop.py",
     "                frames = wire.recv_frames(worker.link)\n            except zmq.Again:\n                return\n",
     ("                frames = wire.recv_frames(worker.link)\n            except zmq.Again:\n                return\n"
      "            mark('supervisor received from the worker')\n")),
    ("supervisor/loop.py",
     ("        self.chores.after_large(lm.payload[wire.PUBLISHED.buffers:])\n"
      "        wire.send_frames(self.sockets.iopub, lm.payload)\n"),
     ("        self.chores.after_large(lm.payload[wire.PUBLISHED.buffers:])\n"
      "        wire.send_frames(self.sockets.iopub, lm.payload)\n"
      "        mark('supervisor published the echo')\n")),
    ("supervisor/flow.py",
     '        self.out.status("idle", request)\n        if (meta.get("status")',
     ('        self.out.status("idle", request)\n        mark("supervisor published idle")\n'
      '        if (meta.get("status")')),
    ("supervisor/loop.py", "    def _close(self) -> None:\n",
     "    def _close(self) -> None:\n        dump('supervisor')\n"),
    ("worker/link.py", "from .. import pipes, transport, wire\n", "from .. import pipes, transport, wire\n" + IMPORT),
    ("worker/link.py",
     "                    readable, _, _ = select.select((*fds, self._signal_r), [], [], timeout)\n",
     ("                    readable, _, _ = select.select((*fds, self._signal_r), [], [], timeout)\n"
      "                    mark('worker woke')\n")),
    ("worker/link.py",
     "            wire.send_frames(self._pair, frames)\n",
     "            wire.send_frames(self._pair, frames)\n            mark('worker sent ' + kind.decode())\n"),
    ("worker/main.py", "from .. import CONNECTION_FILE_ENV, heap, progress, wire\n",
     "from .. import CONNECTION_FILE_ENV, heap, progress, wire\n" + IMPORT),
    ("worker/main.py", "        lm = await link.receive_async(_MAIN_KINDS)\n",
     "        lm = await link.receive_async(_MAIN_KINDS)\n        mark('worker read the request')\n"),
    ("worker/main.py", "        elif lm.kind == wire.SHUTDOWN:\n",
     "        elif lm.kind == wire.SHUTDOWN:\n            dump('worker')\n"),
    ("worker/kernel.py", "from .. import wire\n", "from .. import wire\n" + IMPORT),
    ("worker/kernel.py", "            msg = _parse(frames)\n",
     "            msg = _parse(frames)\n            mark('worker parsed the request')\n"),
    ("worker/kernel.py", "        self.flush_streams(fds=False)\n        self.messenger.publish(",
     ("        mark('worker: the echo callback sends')\n"
      "        self.flush_streams(fds=False)\n        self.messenger.publish(")),
]


def instrumented_copy(dest: Path) -> Path:
    """A copy of the relaykernel package with the timestamps of EDITS; returns its root."""
    src = Path(harness.REPO_ROOT) / "relaykernel"
    pkg = dest / "relaykernel"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_timeline.py").write_text(TRACE_MODULE)
    for rel, old, new in EDITS:
        path = pkg / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"echo_timeline: the edit for {rel} no longer applies: {old.strip()!r}")
        path.write_text(text.replace(old, new))
    return dest


def timeline(sends: list[tuple[int, int]], marks: list[tuple[int, str]]) -> list[tuple[float, str, int]]:
    """Median offset (us) from the client's send of each mark's first occurrence within
    each echo, sorted by time: [(median_us, mark, how many echoes had it)]."""
    marks.sort()
    times = [t for t, _ in marks]
    offsets: dict[str, list[float]] = defaultdict(list)
    for t0, t1 in sends:
        seen: set[str] = set()
        for t, tag in marks[bisect.bisect_left(times, t0) : bisect.bisect_right(times, t1)]:
            if tag not in seen:
                seen.add(tag)
                offsets[tag].append((t - t0) / 1e3)
        offsets["client received the echo"].append((t1 - t0) / 1e3)
    return sorted((statistics.median(v), tag, len(v)) for tag, v in offsets.items())


def _switches(k: harness.Kernel) -> dict[tuple[int, str], tuple[int, int]]:
    """(voluntary, involuntary) context switches of the kernel's supervisor and every
    descendant process, by (pid, "process name: thread name"), threads of one name summed."""
    root = k.km.provisioner.process.pid  # type: ignore[union-attr]
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            for tid in os.listdir(f"/proc/{pid}/task"):
                vol = invol = 0
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("Name:"):
                            name = line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
                        elif line.startswith("voluntary_ctxt_switches"):
                            vol = int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol = int(line.split()[1])
                key = (pid, f"{comm}: {name}" if tid != str(pid) else f"{comm}: main")
                v0, i0 = counts.get(key, (0, 0))
                counts[key] = (v0 + vol, i0 + invol)
        except OSError:
            continue
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500, help="echoes per kernel")
    ap.add_argument("--no-interleave", action="store_true",
                    help="all relaykernel echoes first, then ipykernel's (a warm run)")
    ap.add_argument("--buffer-mb", type=float, default=0,
                    help="each echo carries a binary buffer of this size (use a small -n)")
    ap.add_argument("--also", metavar="TREE",
                    help="also run the relaykernel of this source tree, interleaved (uninstrumented)")
    ap.add_argument("--ctxsw", action="store_true",
                    help="count the relaykernel processes' context switches per echo")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="relaykernel-timeline-"))
    try:
        root = instrumented_copy(work)
        out = work / "marks"
        out.mkdir()
        os.environ["RELAYKERNEL_TIMELINE_DIR"] = str(out)
        pythonpath = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), pythonpath]))
        specs = harness.write_kernelspecs()
        ctx = harness.make_context()
        repo_root = harness.REPO_ROOT
        harness.REPO_ROOT = root  # the kernel's cwd, first on its sys.path
        kernels = {}
        try:
            kernels["relaykernel"] = harness.start_kernel("relaykernel", "relaykernel", ctx, 60)
            if a.also:
                also = Path(a.also).resolve()
                harness.REPO_ROOT = also
                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(also), pythonpath]))
                kernels[f"relaykernel@{also}"] = harness.start_kernel("relaykernel-also", "relaykernel", ctx, 60)
                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), pythonpath]))
            harness.REPO_ROOT = repo_root
            kernels["ipykernel"] = harness.start_kernel("ipykernel", "ipykernel", ctx, 60)
            echoes = {name: Echo(k, 30) for name, k in kernels.items()}
            payload = os.urandom(int(a.buffer_mb * (1 << 20))) if a.buffer_mb else None
            for e in echoes.values():
                for i in range(2 if payload else 20):
                    e.roundtrip(f"warm{i}", payload, settle=payload is not None)
            sends: list[tuple[int, int]] = []
            rts: dict[str, list[float]] = {name: [] for name in echoes}
            order = [[(name, i) for name in echoes] for i in range(a.n)]
            if a.no_interleave:
                order = [[(name, i) for i in range(a.n)] for name in echoes]
            if a.ctxsw:  # the idle rate (the worker's flush ticker wakes every 50 ms), subtracted below
                idle0, t_idle = {n: _switches(k) for n, k in kernels.items()}, time.monotonic()
                time.sleep(3)
                idle1, t_idle = {n: _switches(k) for n, k in kernels.items()}, time.monotonic() - t_idle
                switches, t_run = {n: _switches(k) for n, k in kernels.items()}, time.monotonic()
            for step in order:
                for name, i in step:
                    if payload is not None:  # leftovers of the last request, before t0
                        echoes[name].k.waiter.drain(quiet=0.02)
                    t0 = time.perf_counter_ns()
                    dt = echoes[name].roundtrip(i, payload)
                    rts[name].append(dt)
                    if name == "relaykernel":
                        sends.append((t0, t0 + int(dt * 1e9)))
            if a.ctxsw:
                after, t_run = {n: _switches(k) for n, k in kernels.items()}, time.monotonic() - t_run
                scale = t_run / t_idle
                per_echo = {n: {k: (after[n][k][0] - v[0] - scale * (idle1[n][k][0] - idle0[n][k][0]),
                                    after[n][k][1] - v[1] - scale * (idle1[n][k][1] - idle0[n][k][1]))
                                for k, v in switches[n].items()
                                if k in after[n] and k in idle0[n] and k in idle1[n]}
                            for n in kernels}
        finally:
            harness.REPO_ROOT = repo_root
            for k in kernels.values():
                harness.stop_kernel(k)
            specs.cleanup()
        deadline = time.monotonic() + 10
        while len(list(out.glob("*.txt"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker writes its marks as it exits
        marks = [(int(t), tag) for f in out.glob("*.txt")
                 for tag, t in (line.rsplit(" ", 1) for line in f.read_text().splitlines())]
        if not marks:
            raise SystemExit("echo_timeline: the instrumented kernel wrote no timestamps")
        mode = "one kernel after the other" if a.no_interleave else "interleaved"
        carrying = f", each with a {a.buffer_mb:g} MB buffer" if payload else ""
        print(f"sequential comm echo{carrying}, n={a.n} per kernel, {mode}; medians:")
        for name, v in rts.items():
            print(f"  {name}: {statistics.median(v) * 1e3:.3f} ms")
        print("\nrelaykernel, median time from the client's send (us), and the step from the line above:")
        previous = 0.0
        for median, tag, count in timeline(sends, marks):
            print(f"  {median:8.1f}  (+{median - previous:6.1f})  {tag}  [{count}/{len(sends)} echoes]")
            previous = median
        if a.ctxsw:
            print(f"\ncontext switches per echo (voluntary / involuntary), every thread of the kernel's"
                  f" processes, n={a.n}, less the idle rate over the run's duration:")
            for name, counts in per_echo.items():
                print(f"  {name}:")
                for (pid, comm), (vol, invol) in sorted(counts.items()):
                    if abs(vol) + abs(invol) >= 0.05 * a.n:
                        print(f"    {pid:>7} {comm:32} {vol / a.n:6.2f} / {invol / a.n:5.2f}")
                vol = sum(v for v, _ in counts.values()) / a.n
                invol = sum(i for _, i in counts.values()) / a.n
                print(f"    {'':7} {'all':32} {vol:6.2f} / {invol:5.2f}")
        print("\n[k/n]: in how many echoes the point came before the client had the echo; points"
              " below n/n are partly off the critical path (busy, done, idle).")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
