"""The measurements of issue 6, each returning validated table rows.

Every function treats all kernels identically (same code, same waits) and
runs them interleaved via :func:`stats.interleave`.  A figure is only added
after its check passed: all output lines arrived in order, every echo came
back, buffers are byte-identical, ``1+1`` really gave ``2``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

import psutil
import zmq

from .harness import (
    BenchError,
    Kernel,
    KernelDied,
    first_result,
    launch,
    new_client,
    stop_kernel,
)
from .stats import Cell, Row, interleave


@dataclass
class Config:
    """How much work each measurement does; ``quick`` keeps a smoke run < 60 s."""

    startups: int = 10
    exec_n: int = 500
    output_lines: int = 200_000
    output_reps: int = 3
    comm_seq_n: int = 1000
    comm_pipe_n: int = 20_000
    comm_pipe_reps: int = 3
    comm_window: int = 256
    buf_sizes: tuple = (1 << 20, 50 << 20)
    buf_reps: tuple = (20, 5)  # per size in buf_sizes
    restarts: int = 5
    crashes: int = 5
    floor_n: int = 2000
    timeout: float = 60.0  # generic per-wait timeout, seconds

    @classmethod
    def quick(cls) -> Config:
        return cls(
            startups=3,
            exec_n=100,
            output_lines=200_000,
            output_reps=1,
            comm_seq_n=200,
            comm_pipe_n=2000,
            comm_pipe_reps=1,
            buf_reps=(3, 1),
            restarts=2,
            crashes=2,
            floor_n=2000,
            timeout=30.0,
        )


@dataclass
class Bench:
    """What the measurements share: the long-lived kernels, in column order."""

    kernels: dict[str, Kernel]
    cfg: Config

    @property
    def labels(self) -> list[str]:
        return list(self.kernels)


# ---------------------------------------------------------------- 1 startup
def startup(specs: dict[str, str], ctx: zmq.Context, cfg: Config) -> list[Row]:
    """Fresh launches, alternated A B A B; each kernel is shut down after timing.

    Both figures are measured from just before ``KernelManager.start_kernel``.
    """
    info = {lb: Cell() for lb in specs}
    result = {lb: Cell() for lb in specs}

    def one(lb: str, i: int) -> float:
        k, t0 = launch(lb, specs[lb], ctx)
        try:
            k.waiter.kernel_info(cfg.timeout, alive=k.alive)
            t_info = time.perf_counter() - t0
            try:
                first_result(k, cfg.timeout)
                result[lb].samples.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - only this figure becomes n/a
                result[lb].note = result[lb].note or str(e)
        finally:
            stop_kernel(k)
        return t_info

    interleave(list(specs), cfg.startups, one, info)
    for lb in specs:
        if info[lb].note:
            result[lb].note = result[lb].note or info[lb].note
        if result[lb].note:
            result[lb].samples.clear()
    return [
        Row("startup → kernel_info_reply", "ms", info, "≤ 0.3x", 1e3),
        Row("startup → first `1+1` result", "ms", result, "", 1e3),
    ]


# -------------------------------------------------------- 2 execute round trip
def execute_rt(b: Bench) -> list[Row]:
    """Sequential execute_requests; one sample = send → reply AND idle received."""
    rows = []
    for code, target in (("pass", "≤ 0.5x"), ("1+1", "≤ 0.5x")):
        for k in b.kernels.values():
            k.waiter.drain()

        def one(lb: str, i: int, code=code) -> float:
            k = b.kernels[lb]
            r = k.waiter.execute(code, b.cfg.timeout, want_result=(code == "1+1"), alive=k.alive)
            if r.reply.get("status") != "ok":
                raise BenchError(f"{code!r} replied {r.reply.get('status')}")
            if code == "1+1" and r.result != "2":
                raise BenchError(f"1+1 gave {r.result!r}")
            return max(r.t_reply, r.t_idle)

        for lb in b.labels:  # warm-up, untimed
            b.kernels[lb].waiter.execute(code, b.cfg.timeout, alive=b.kernels[lb].alive)
        cpu_before = {lb: cpu_seconds(k) for lb, k in b.kernels.items()}
        cells = interleave(b.labels, b.cfg.exec_n, one)
        rows.append(Row(f"execute rt `{code}` (n={b.cfg.exec_n})", "ms", cells, target, 1e3))
        if code == "pass":
            cpu = {}
            for lb, k in b.kernels.items():
                try:
                    spent = cpu_seconds(k) - cpu_before[lb]
                    cpu[lb] = Cell([spent / b.cfg.exec_n], single=True) if cells[lb].ok else Cell(note="n/a")
                except BenchError as e:
                    cpu[lb] = Cell(note=str(e))
            rows.append(Row("CPU of the launched process (supervisor) per `pass` execute", "ms", cpu,
                            "relay ≤ 3x floor", 1e3))
    return rows


def cpu_seconds(k: Kernel) -> float:
    """User + system CPU time of the launched process (not its children)."""
    if k.pid is None:
        raise BenchError("no kernel pid")
    try:
        t = psutil.Process(k.pid).cpu_times()
    except psutil.NoSuchProcess as e:
        raise BenchError(str(e)) from None
    return t.user + t.system


# ------------------------------------------------------------ 3 output flood
def output(b: Bench) -> list[Row]:
    """A cell printing N lines: time to idle and MB/s, after checking every line."""
    n = b.cfg.output_lines
    code = f"for i in range({n}): print(i)"
    expected = "".join(f"{i}\n" for i in range(n))
    nbytes = len(expected.encode())
    times: dict[str, list[float]] = {lb: [] for lb in b.labels}

    def one(lb: str, i: int) -> float:
        k = b.kernels[lb]
        k.waiter.drain()
        r = k.waiter.execute(code, b.cfg.timeout * 4, collect_stdout=True, alive=k.alive)
        got = "".join(r.stdout)
        if got != expected:
            lines = got.splitlines()
            bad = next((j for j, s in enumerate(lines) if s != str(j)), len(lines))
            raise BenchError(f"output mismatch: {len(lines)}/{n} lines, first bad line {bad}")
        times[lb].append(r.t_idle)
        return nbytes / r.t_idle

    mbs = interleave(b.labels, b.cfg.output_reps, one)
    t = {lb: Cell(samples=times[lb] if mbs[lb].ok else [], note=mbs[lb].note) for lb in b.labels}
    return [
        Row(f"output {n:,} lines: time to idle", "s", t, ""),
        Row(
            f"output throughput ({nbytes / 1e6:.2f} MB)",
            "MB/s",
            mbs,
            "≥ 1.5x",
            1e-6,
            higher_is_better=True,
        ),
    ]


# -------------------------------------------------------------------- 4 comms
# through the `comm` package, the API every kernel here implements (ipywidgets uses it)
ECHO_SETUP = """
import comm as _relaybench_comm
def _relaybench_echo(c, msg):
    c.on_msg(lambda m: c.send(m['content']['data'], buffers=m['buffers']))
_relaybench_comm.get_comm_manager().register_target('echo', _relaybench_echo)
"""


class Echo:
    """A client-side comm to the kernel's ``echo`` target."""

    def __init__(self, k: Kernel, timeout: float) -> None:
        self.k = k
        self.timeout = timeout
        self.comm_id = uuid.uuid4().hex
        r = k.waiter.execute(ECHO_SETUP, timeout, alive=k.alive)
        if r.reply.get("status") != "ok":
            raise BenchError(f"echo target setup failed: {r.reply.get('ename')}")
        k.waiter.send(
            k.waiter.session.msg(
                "comm_open", {"comm_id": self.comm_id, "target_name": "echo", "data": {}}
            )
        )
        # The first echo doubles as "the comm is open" (no reliance on status msgs).
        # A kernel whose target never answers fails here, within 10 s, for all comm rows.
        self.timeout = min(timeout, 10.0)
        try:
            self.roundtrip(-1)
        except BenchError as e:
            raise BenchError(f"the echo comm target never answered ({e})") from None
        self.timeout = timeout

    #: comm_msgs go to this subshell (JupyterLab's commsOverSubshells), None: the main shell
    subshell_id: str | None = None

    def msg(self, data: dict) -> dict:
        msg = self.k.waiter.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        if self.subshell_id is not None:
            msg["header"]["subshell_id"] = self.subshell_id
        return msg

    def over_subshell(self) -> None:
        """Send the next comm_msgs over a new subshell, as JupyterLab 4.4+ does when the
        kernel lists "kernel subshells"; BenchError if the kernel has none."""
        kc = self.k.waiter.kc
        request = kc.session.msg("create_subshell_request", {})
        kc.control_channel.send(request)
        deadline = time.perf_counter() + self.timeout
        while time.perf_counter() < deadline:
            try:
                reply = kc.get_control_msg(timeout=max(0.01, deadline - time.perf_counter()))
            except queue.Empty:  # the loop ends on the deadline
                continue
            if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                if reply["content"].get("status") != "ok":
                    raise BenchError(f"no subshell: {reply['content'].get('evalue')}")
                self.subshell_id = reply["content"]["subshell_id"]
                return
        raise BenchError("no create_subshell_reply")

    def is_echo(self, chan: str, m: dict) -> bool:
        return (
            chan == "iopub"
            and m["msg_type"] == "comm_msg"
            and m["content"].get("comm_id") == self.comm_id
        )

    def roundtrip(self, seq, buffer: bytes | None = None, settle: bool = False) -> float:
        """One echo, timed from the send to the echo's arrival.

        Untimed, it then waits for the request's ``idle`` too, so the kernel
        has finished the request before the next sample starts -- on another
        kernel, when runs are interleaved, which would otherwise pay for this
        kernel's leftover work (the execute round trip waits for idle the same
        way).  ``settle`` first drains leftovers (status msgs) of earlier
        requests, so a big transfer is not timed while the kernel still
        finishes the last one."""
        w = self.k.waiter
        if settle:
            w.drain(quiet=0.02)
        got: dict = {}
        msg = self.msg({"seq": seq})
        mid = msg["header"]["msg_id"]

        def on(chan: str, m: dict) -> bool:
            if self.is_echo(chan, m) and m["content"]["data"].get("seq") == seq:
                got["m"] = m
                got["t"] = time.perf_counter()
            elif (chan == "iopub" and m["msg_type"] == "status"
                  and m["content"]["execution_state"] == "idle"
                  and m["parent_header"].get("msg_id") == mid):
                got["idle"] = True
            return "m" in got and "idle" in got

        t0 = time.perf_counter()
        w.send(msg, buffers=[buffer] if buffer is not None else None)
        w.loop(on, self.timeout, self.k.alive, f"comm echo {seq} and its idle")
        dt = got["t"] - t0
        if buffer is not None:
            bufs = got["m"]["buffers"]
            if len(bufs) != 1 or len(bufs[0]) != len(buffer) or bytes(bufs[0]) != buffer:
                raise BenchError(f"echoed buffer differs ({[len(x) for x in bufs]} bytes)")
        return dt

    def pipelined(self, n: int, window: int) -> float:
        """Send n comm_msgs keeping ≤ window in flight; return msgs/s.

        The window keeps iopub below zmq's default high-water marks (a PUB
        socket silently drops beyond them), so a loss is the kernel's, not
        the client's.  Echoes must come back exactly 0..n-1 in order.
        """
        w = self.k.waiter
        w.drain()
        sent = recvd = 0
        tag = uuid.uuid4().hex[:8]
        err: list[str] = []
        batch = max(1, window // 8)

        def on(chan: str, m: dict) -> bool:
            nonlocal recvd
            if self.is_echo(chan, m):
                d = m["content"]["data"]
                if d.get("tag") == tag:
                    if d.get("seq") != recvd:
                        err.append(f"echo {d.get('seq')} arrived when {recvd} expected")
                        return True
                    recvd += 1
            # hand back to the sender once a batch of window slots is free
            return recvd == n or (sent < n and sent - recvd <= window - batch)

        t0 = time.perf_counter()
        deadline = t0 + self.timeout * 4
        while recvd < n:
            while sent < n and sent - recvd < window:
                w.send(self.msg({"seq": sent, "tag": tag}))
                sent += 1
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BenchError(f"pipelined: {recvd}/{n} echoes before timeout")
            try:
                w.loop(on, remaining, self.k.alive, "pipelined echoes")
            except BenchError as e:
                raise BenchError(f"pipelined: {recvd}/{n} echoes ({e})") from None
            if err:
                raise BenchError(err[0])
        return n / (time.perf_counter() - t0)


def comms(b: Bench) -> list[Row]:
    cfg = b.cfg
    echoes: dict[str, Echo] = {}
    setup_err: dict[str, str] = {}
    for lb, k in b.kernels.items():
        try:
            k.waiter.drain()
            echoes[lb] = Echo(k, cfg.timeout)
        except BenchError as e:
            setup_err[lb] = str(e)

    def cells_with_setup_errors() -> dict[str, Cell]:
        return {lb: Cell(note=setup_err.get(lb)) for lb in b.labels}

    rows = []
    seq = interleave(
        b.labels, cfg.comm_seq_n, lambda lb, i: echoes[lb].roundtrip(i), cells_with_setup_errors()
    )
    rows.append(Row(f"comm echo rt sequential (n={cfg.comm_seq_n})", "ms", seq, "≤ 0.5x", 1e3))

    # JupyterLab 4.4+ sends comm messages over a subshell when the kernel has them.
    # A comm of its own: ipykernel 7.4 routes a comm's messages to the subshell that
    # last sent on it, and answered the next main-shell burst on that comm out of
    # order ("echo 22 arrived when 2 expected"), which failed its pipelined row.
    over: dict[str, Echo] = {}
    sub_err: dict[str, str] = dict(setup_err)
    for lb in echoes:
        try:
            sub = Echo(b.kernels[lb], cfg.timeout)
            sub.over_subshell()
            over[lb] = sub
        except BenchError as e:
            sub_err[lb] = str(e)
    seq_sub = interleave(b.labels, cfg.comm_seq_n, lambda lb, i: over[lb].roundtrip(i),
                         {lb: Cell(note=sub_err.get(lb)) for lb in b.labels})
    rows.append(Row(f"comm echo rt over a subshell (n={cfg.comm_seq_n})", "ms", seq_sub, "", 1e3))

    pipe = interleave(
        b.labels,
        cfg.comm_pipe_reps,
        lambda lb, i: echoes[lb].pipelined(cfg.comm_pipe_n, cfg.comm_window),
        cells_with_setup_errors(),
    )
    rows.append(
        Row(
            f"comm pipelined {cfg.comm_pipe_n:,} echoes",
            "msgs/s",
            pipe,
            "≥ 5x",
            higher_is_better=True,
        )
    )

    for size, reps in zip(cfg.buf_sizes, cfg.buf_reps):
        payload = os.urandom(size)
        cells = cells_with_setup_errors()
        # one untimed round trip each: first-touch allocation of a buffer this
        # size would otherwise land on whichever kernel happens to go first
        interleave(b.labels, 1, lambda lb, i, p=payload: echoes[lb].roundtrip("warm", p), cells)
        for c in cells.values():
            c.samples.clear()
        cells = interleave(
            b.labels,
            reps,
            lambda lb, i, p=payload: echoes[lb].roundtrip(f"buf{i}", p, settle=True),
            cells,
        )
        target = "≤ 1.0x" if size >= 50 << 20 else ""
        rows.append(Row(f"comm {size >> 20} MB buffer round trip", "ms", cells, target, 1e3))
    return rows


# ------------------------------------------------------------------ 5 restart
def restart(b: Bench, ctx: zmq.Context) -> list[Row]:
    """``km.restart_kernel()`` until a kernel_info_reply on a *fresh* client, and on
    until the first ``1+1`` result: what the user waits for before a cell runs
    (relaykernel's supervisor answers kernel_info without a worker)."""
    result = {lb: Cell() for lb in b.labels}

    def one(lb: str, i: int) -> float:
        k = b.kernels[lb]
        k.kc.stop_channels()
        t0 = time.perf_counter()
        k.km.restart_kernel()
        k.kc, k.waiter = new_client(k.km, ctx)
        k.waiter.kernel_info(b.cfg.timeout, alive=k.alive)
        dt = time.perf_counter() - t0
        first_result(k, b.cfg.timeout)  # the restarted kernel really works
        result[lb].samples.append(time.perf_counter() - t0)
        return dt

    info = interleave(b.labels, b.cfg.restarts, one)
    for lb in b.labels:
        if info[lb].note:
            result[lb].note = info[lb].note
            result[lb].samples.clear()
    return [
        Row(f"restart → kernel_info (n={b.cfg.restarts})", "ms", info, "≤ 0.2x", 1e3),
        Row(f"restart → first `1+1` result (n={b.cfg.restarts})", "ms", result, "", 1e3),
    ]


# ----------------------------------------------------------- 6 crash recovery
def crash(b: Bench) -> list[Row]:
    """``os._exit(1)`` in a cell: time from its (error) reply to the next ``1+1`` result.

    A kernel that does not survive this gets ``n/a (kernel died)``; this is
    detected from the process exiting or from the reply timeout.
    """

    def one(lb: str, i: int) -> float:
        k = b.kernels[lb]
        k.waiter.drain()
        try:
            r = k.waiter.execute(
                "import os; os._exit(1)", b.cfg.timeout, alive=k.alive, wait_idle=False
            )
        except KernelDied:
            raise BenchError("n/a (kernel died)") from None
        except BenchError:
            raise BenchError("n/a (kernel died: no reply)") from None
        if r.reply.get("status") != "error":
            raise BenchError(f"crash cell replied {r.reply.get('status')!r}, expected error")
        t0 = r.t_sent + r.t_reply  # when the crash cell's reply arrived
        nxt = k.waiter.execute("1+1", b.cfg.timeout, want_result=True, alive=k.alive)
        if nxt.result != "2":
            raise BenchError(f"after crash 1+1 gave {nxt.result!r}")
        return time.perf_counter() - t0

    return [
        Row(
            f"crash reply → next `1+1` result (n={b.cfg.crashes})",
            "ms",
            interleave(b.labels, b.cfg.crashes, one),
            "< 300 ms abs",
            1e3,
        )
    ]


# ------------------------------------------------------------------- 7 memory
#: Seconds every kernel sits idle after the workload before its memory is read.
SETTLE_BEFORE_RSS = 5.0
#: The cell run in every kernel before the second memory reading.
IMPORT_CELL = "import numpy, pandas"
#: A process tree counts as settled (standby and fork server started) once its
#: set of processes has not changed for this long.
TREE_QUIET = 1.0


@dataclass
class ProcMemory:
    """One process of a kernel's tree, named by its role (bytes)."""

    role: str
    pid: int
    rss: float
    pss: float
    uss: float


#: Per-process readings of the last :func:`memory` calls, for the report's second
#: table: (when, kernel label, processes).
PROCESS_READINGS: list[tuple[str, str, list[ProcMemory]]] = []


def _tree(k: Kernel) -> list[psutil.Process]:
    if k.pid is None or not k.alive():
        raise BenchError("kernel process not running")
    try:
        root = psutil.Process(k.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess as e:
        raise BenchError(str(e)) from None


def _settle_tree(k: Kernel, limit: float) -> None:
    """Wait (at most ``limit`` s) until the kernel's set of processes stops changing."""
    deadline = time.monotonic() + limit
    seen = {p.pid for p in _tree(k)}
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < TREE_QUIET and time.monotonic() < deadline:
        time.sleep(0.1)
        now = {p.pid for p in _tree(k)}
        if now != seen:
            seen, quiet_since = now, time.monotonic()


def _cell_pid(k: Kernel, timeout: float) -> int:
    """The pid of the process that runs the kernel's cells."""
    r = k.waiter.execute("__import__('os').getpid()", timeout, want_result=True, alive=k.alive)
    if r.result is None or not r.result.isdigit():
        raise BenchError(f"getpid() gave {r.result!r}")
    return int(r.result)


#: The process name of relaykernel's worker template (relaykernel/worker/template.py).
TEMPLATE_NAME = "relay-template"


def _role(p: psutil.Process, root: int, cells: int, servers: set[int]) -> str:
    """What a process of a kernel's tree is there for (from its place, name and command line).

    A process forked without exec keeps its parent's command line: the standby
    forked from the fork server reads as one, a snapshot as a worker.  The worker
    template names itself (``relay-template``); its children take their name back."""
    if p.pid == root:
        return "kernel (runs the cells)" if p.pid == cells else "supervisor"
    if p.pid == cells:
        return "active worker"
    parent = p.ppid()
    if parent == cells:
        return "snapshot (fork of the active worker)"
    if p.pid in servers and p.name() == TEMPLATE_NAME:
        return "worker template (fork server and standby)"
    if parent in servers:
        return "standby worker (forked)"
    if "resource_tracker" in " ".join(p.cmdline()):
        return "resource tracker (multiprocess)"
    if p.pid in servers:
        return "fork server"
    if parent == root:
        return "standby worker (spawned)"
    return f"other ({p.name()})"


def process_memory(k: Kernel, timeout: float) -> list[ProcMemory]:
    """RSS, PSS and USS (``/proc/PID/smaps_rollup``) of each process of the kernel's tree."""
    cells = _cell_pid(k, timeout)
    _settle_tree(k, timeout)
    procs = _tree(k)
    if cells not in {p.pid for p in procs}:
        # a snapshot promoted after a crash outlived its parent, the worker it was forked
        # from: reparented away from the kernel's tree, it and its own children still count
        with contextlib.suppress(psutil.NoSuchProcess):
            active = psutil.Process(cells)
            procs += [active, *active.children(recursive=True)]
    servers = {p.pid for p in procs[1:] if p.ppid() == procs[0].pid
               and ("forkserver" in " ".join(p.cmdline()) or p.name() == TEMPLATE_NAME)}
    out = []
    for p in procs:
        try:
            m = p.memory_full_info()
            out.append(ProcMemory(_role(p, procs[0].pid, cells, servers), p.pid, m.rss, m.pss, m.uss))
        except psutil.NoSuchProcess:
            pass
    return out


def import_workload(b: Bench) -> None:
    """Run :data:`IMPORT_CELL` in every kernel (before the second memory reading)."""
    for k in b.kernels.values():
        with contextlib.suppress(BenchError):  # the reading then says what is wrong
            r = k.waiter.execute(IMPORT_CELL, b.cfg.timeout, alive=k.alive)
            if r.reply.get("status") != "ok":
                raise BenchError(f"{IMPORT_CELL!r} failed: {r.reply.get('ename')}")


def memory(b: Bench, when: str, pss_target: str = "") -> list[Row]:
    """Memory of each kernel's whole process tree, and of its launched process."""
    sup: dict[str, Cell] = {}
    total: dict[str, dict[str, Cell]] = {m: {} for m in ("rss", "pss", "uss")}
    count: dict[str, Cell] = {}
    for lb, k in b.kernels.items():
        try:
            procs = process_memory(k, b.cfg.timeout)
        except BenchError as e:
            for cells in (sup, count, *total.values()):
                cells[lb] = Cell(note=str(e))
            continue
        PROCESS_READINGS.append((when, lb, procs))
        sup[lb] = Cell([procs[0].rss], single=True)
        count[lb] = Cell([float(len(procs))], single=True)
        for m, cells in total.items():
            cells[lb] = Cell([sum(getattr(p, m) for p in procs)], single=True)
    return [
        Row(f"PSS whole process tree, {when}", "MB", total["pss"], pss_target, 1e-6),
        Row(f"USS whole process tree, {when}", "MB", total["uss"], "", 1e-6),
        Row(f"RSS whole process tree, {when}", "MB", total["rss"], "", 1e-6),
        Row(f"processes in the tree, {when}", "count", count, "", 1.0),
        Row(f"RSS launched process (supervisor), {when}", "MB", sup, "≤ 40 MB abs", 1e-6),
    ]


# -------------------------------------------------------------------- 8 floor
_ECHO_SERVER = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    parts = s.recv_multipart()
    if parts[-1] == b"quit":
        break
    s.send_multipart(parts)
"""


_LARGE_ECHO = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.PAIR)
s.connect(sys.argv[1])
while True:
    m = s.recv(copy=False)
    if len(m) < 8:
        break
    s.send(m, copy=False)
"""

_LARGE_RELAY = r"""
import sys, zmq
ctx = zmq.Context()
front, back = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
front.connect(sys.argv[1])
back.bind(sys.argv[2])
while True:
    m = front.recv(copy=False)
    back.send(m, copy=False)
    if len(m) < 8:
        break
    front.send(back.recv(copy=False), copy=False)
"""


#: Bytes of the bare floor's small round trip: about one comm echo's seven frames.
ECHO_FLOOR_BYTES = 400


def size_label(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size} B"


def floor_paths(size: int, reps: int, timeout: float) -> tuple[Cell, Cell]:
    """Bare pyzmq round trips of one ``size``-byte frame, zero-copy everywhere:
    to an echo process over tcp (ipykernel's topology), and through a relay
    process that forwards over ipc to the echo process (relaykernel's).  What
    the extra hop costs physically, with no Jupyter, signing or Python work.

    Both topologies run at once and take turns (A B A B ...), as the kernels
    do, so each sample finds the machine as a kernel's would: the other
    path's processes ran in between."""
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory(prefix="relaybench-") as tmp, contextlib.ExitStack() as stack:
        socks = []
        for scripts in ([_LARGE_ECHO], [_LARGE_RELAY, _LARGE_ECHO]):
            ctx = zmq.Context()
            sock = ctx.socket(zmq.PAIR)
            sock.linger = 0
            stack.callback(ctx.term)
            stack.callback(sock.close)
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            ipc = f"ipc://{tmp}/relay-{len(socks)}"
            args = [[f"tcp://127.0.0.1:{port}"]] if len(scripts) == 1 else [[f"tcp://127.0.0.1:{port}", ipc], [ipc]]
            for code, a in zip(scripts, args):
                stack.callback(_reap, subprocess.Popen([sys.executable, "-c", code, *a]))
            stack.callback(_send_quietly, sock, b"quit")
            socks.append(sock)
        cells = [Cell(), Cell()]
        warmup = max(1, reps // 10)
        try:
            for i in range(warmup + reps):
                for sock, cell in zip(socks, cells):
                    t0 = time.perf_counter()
                    sock.send(payload, copy=False)
                    if not sock.poll(timeout * 1000):
                        raise BenchError(f"{size}-byte echo timed out")
                    back = sock.recv(copy=False)
                    dt = time.perf_counter() - t0
                    if back.buffer != payload:
                        raise BenchError(f"{size}-byte echo corrupted")
                    if i >= warmup:
                        cell.samples.append(dt)
        except BenchError as e:
            return Cell(note=str(e)), Cell(note=str(e))
    return cells[0], cells[1]


def _send_quietly(sock: zmq.Socket, msg: bytes) -> None:
    with contextlib.suppress(zmq.ZMQError):
        sock.send(msg, zmq.NOBLOCK)


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def floor(n: int, timeout: float) -> Cell:
    """Bare pyzmq DEALER→ROUTER→DEALER round trip to a child process over tcp.

    This is the least any kernel can cost per request on this machine (same
    transport as Jupyter, no serialisation, no signing), so it puts the
    kernel figures in proportion.
    """
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    try:
        import select

        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise BenchError("floor echo server did not start")
        s.connect(f"tcp://127.0.0.1:{int(proc.stdout.readline())}")
        payload = b"x" * 64
        samples = []
        for i in range(n + 100):
            t0 = time.perf_counter()
            s.send(payload)
            if not s.poll(timeout * 1000):
                raise BenchError("floor echo timed out")
            if s.recv() != payload:
                raise BenchError("floor echo corrupted")
            if i >= 100:  # first 100 are warm-up
                samples.append(time.perf_counter() - t0)
        s.send(b"quit")
        return Cell(samples)
    except BenchError as e:
        return Cell(note=str(e))
    finally:
        s.close()
        ctx.term()
        _reap(proc)


# ---------------------------------------------------------------- 9 snapshots
#: Live heap sizes for crash → next result with the state restored (4 GiB: full runs
#: with room only, see snapshot_sizes).
SNAPSHOT_SIZES = (100 << 20, 1 << 30)
BIG_SNAPSHOT = 4 << 30
#: Seconds of quiet that let the worker take a snapshot between two timed cells
#: (IDLE_DELAY 0.05 s, at most one per MIN_INTERVAL 0.5 s: relaykernel/worker/snapshot.py;
#: after quick cells only when asked, ``%snapshot now``: the cells' budget wants more of them).
SNAPSHOT_PAUSE = 0.6
#: Seconds to wait for a snapshot to appear.
SNAPSHOT_WAIT = 20.0


def snapshot_sizes(cfg: Config) -> tuple[int, ...]:
    if cfg.crashes >= 5 and psutil.virtual_memory().available > 3 * BIG_SNAPSHOT:
        return (*SNAPSHOT_SIZES, BIG_SNAPSHOT)
    return SNAPSHOT_SIZES


def _children(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE}
    except psutil.NoSuchProcess:
        return set()


def _wait_snapshot(worker: int, before: set[int], timeout: float) -> int:
    """A new child of the worker (its snapshot) not in ``before``; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _children(worker) - before
        if new:
            return new.pop()
        time.sleep(0.01)
    raise BenchError(f"no snapshot within {timeout:g} s")


def _ok(k: Kernel, code: str, timeout: float) -> float:
    r = k.waiter.execute(code, timeout, alive=k.alive)
    if r.reply.get("status") != "ok":
        raise BenchError(f"{code[:40]!r} replied {r.reply.get('status')}: {r.reply.get('evalue', '')}")
    return max(r.t_reply, r.t_idle or 0.0)


def _define(k: Kernel, size: int, snapshots: bool, timeout: float) -> int:
    """Give the kernel ``size`` bytes of live heap (``a``, written) and ``n = 41``; with
    snapshots, return once the worker holds a snapshot of that state (else 0).  One
    cell: a snapshot taken between a cell and this one would hold the old ``a``, which
    the worker frees here, and keep it (snapshot.py counts it as copies).  With
    snapshots, the cell asks for one after it (``%snapshot now``): a quick cell right
    after the previous snapshot would not wait for one (the cells' budget, snapshot.py),
    and a crash would roll back past it."""
    now = "get_ipython().run_line_magic('snapshot', 'now')\n" if snapshots else ""
    r = k.waiter.execute(f"import os, numpy as np\na = None\na = np.ones({size // 8})\nn = 41\n{now}os.getpid()",
                         timeout, want_result=True, alive=k.alive)
    if r.reply.get("status") != "ok" or not (r.result or "").isdigit():
        raise BenchError(f"defining a {size_label(size)} heap failed: {r.reply.get('evalue', r.result)}")
    if not snapshots:
        return 0
    worker = int(r.result or 0)
    _wait_snapshot_newer(worker)  # a snapshot taken after the cell: due ≤ 0.55 s after it
    return next(iter(_children(worker)))


def snapshots(ctx: zmq.Context, cfg: Config, labels: dict[str, str]) -> list[Row]:
    """Issue 18: relaykernel with snapshots, without, and the baseline, side by side.

    ``labels`` maps column label → kernelspec: snapshots on first, then off, then the
    baseline.  Kernels of their own (a crash kills the baseline)."""
    from .harness import start_kernel

    kernels: dict[str, Kernel] = {}
    try:
        for lb, name in labels.items():
            kernels[lb] = start_kernel(lb, name, ctx, cfg.timeout)
        return _snapshot_rows(kernels, cfg)
    finally:
        for k in kernels.values():
            stop_kernel(k)


def _snapshot_rows(kernels: dict[str, Kernel], cfg: Config) -> list[Row]:
    order = list(kernels)
    on = order[0]
    t = cfg.timeout
    rows = []

    def pass_rt(lb: str, i: int) -> float:
        return _ok(kernels[lb], "pass", t)

    for lb in order:
        _ok(kernels[lb], "pass", t)  # warm-up
    rows.append(Row(f"execute rt `pass`, back to back (n={cfg.exec_n})", "ms",
                    interleave(order, cfg.exec_n, pass_rt), "≤ 0.5x ipykernel", 1e3))

    def pass_after_pause(lb: str, i: int) -> float:
        _ok(kernels[lb], "%snapshot now" if lb == on else "pass", t)
        time.sleep(SNAPSHOT_PAUSE)  # relaykernel forks its snapshot meanwhile
        return _ok(kernels[lb], "pass", t)

    idle_n = max(3, cfg.crashes * 2)
    rows.append(Row(f"execute rt `pass` {SNAPSHOT_PAUSE:g} s after the previous, a snapshot taken meanwhile "
                    f"(`%snapshot now` before; n={idle_n})", "ms",
                    interleave(order, idle_n, pass_after_pause), "", 1e3))

    # crash → next result with the state restored, per size of live heap
    for size in snapshot_sizes(cfg):
        reps = cfg.crashes if size < (1 << 30) else max(2, cfg.crashes // 2 + 1) if size == (1 << 30) else 2

        def restored(lb: str, i: int, size: int = size) -> float:
            k = kernels[lb]
            if not k.alive():
                raise BenchError("n/a (kernel died)")
            _define(k, size, lb == on, t)
            try:
                r = k.waiter.execute("import os; os._exit(1)", t, alive=k.alive, wait_idle=False)
            except (KernelDied, BenchError):
                raise BenchError("n/a (kernel died)") from None
            t0 = r.t_sent + r.t_reply
            nxt = k.waiter.execute("float(a[0]) + n", t, alive=k.alive)  # its result comes before idle
            if nxt.result != "42.0":
                raise BenchError(f"n/a (state lost: {nxt.reply.get('ename', nxt.result)})")
            return time.perf_counter() - t0

        rows.append(Row(f"crash reply → next result with the state restored, {size_label(size)} heap (n={reps})",
                        "ms", interleave(order, reps, restored), "< 300 ms abs at 1 GB" if size == 1 << 30 else "",
                        1e3))

    # copy-on-write: a cell that rewrites 1 GiB right after a snapshot of it, then the
    # same cell again (after the crash rows: freeing a large `a` the snapshot shares would
    # make the worker keep that snapshot a while, see relaykernel/worker/snapshot.py)
    first: dict[str, Cell] = {lb: Cell(single=True) for lb in order}
    cow_uss: dict[str, Cell] = {lb: Cell(note="— (no snapshot)") for lb in order}
    cow_uss[on] = Cell(single=True)
    for lb in order:
        k = kernels[lb]
        if not k.alive():
            first[lb].note = "n/a (kernel died in the crash rows)"
            continue
        try:
            worker = _cell_pid(k, t)
            now = "\nget_ipython().run_line_magic('snapshot', 'now')" if lb == on else ""
            _ok(k, f"import numpy as np\nc = np.ones({(1 << 30) // 8}){now}", t)
            if lb == on:
                _wait_snapshot_newer(worker)  # of `c`
            else:
                time.sleep(SNAPSHOT_PAUSE)
            first[lb].samples.append(_ok(k, "c += 1", t))
            if lb == on:  # read before anything replaces it
                for snap in _children(worker):
                    with contextlib.suppress(psutil.Error):
                        cow_uss[on].samples.append(psutil.Process(snap).memory_full_info().uss)
        except BenchError as e:
            first[lb].note = str(e)
    rows.append(Row("`c += 1` on a 1 GiB array, right after a snapshot of it", "ms", first, "", 1e3))
    rows.append(Row("the snapshot's own memory (USS) after that rewrite", "MB", cow_uss, "", 1e-6))

    def again(lb: str, i: int) -> float:
        if first[lb].note:
            raise BenchError(first[lb].note)
        time.sleep(SNAPSHOT_PAUSE)  # time for a snapshot, if the policy takes one
        return _ok(kernels[lb], "c += 1", t)

    rows.append(Row(f"`c += 1` again, {SNAPSHOT_PAUSE:g} s after the previous (n=4)", "ms",
                    interleave(order, 4, again), "", 1e3))
    return rows


def _wait_snapshot_newer(worker: int) -> None:
    """Until the worker holds a snapshot taken after its last cell: its children
    (the snapshot) have not changed for longer than a snapshot's interval."""
    deadline = time.monotonic() + SNAPSHOT_WAIT
    seen, since = _children(worker), time.monotonic()
    while time.monotonic() < deadline:
        now = _children(worker)
        if now != seen:
            seen, since = now, time.monotonic()
        elif seen and time.monotonic() - since > SNAPSHOT_PAUSE:
            return
        time.sleep(0.01)
    raise BenchError("the worker's snapshot never settled")
