"""What to tell the user when a worker dies: the words of the crash report.

Pure functions, used by the supervisor's main thread (recovery.py decides what
happens to the requests; this module only words it).  The report says what
happened (signal or exit code and its probable cause), what was lost (the
worker's variables) and what was kept (the open comms), so a user who sees it
knows the kernel is still there and what to re-run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field

from .worker_process import ExitInfo

#: ename of the error reply for a request whose worker died.
WORKER_DIED = "WorkerDied"

_CAUSES = {
    signal.SIGSEGV: "segmentation fault in native code (a C extension or ctypes call read invalid memory)",
    signal.SIGBUS: "bus error in native code",
    signal.SIGABRT: "abort in native code (a failed assertion in a C library, or a fatal Python error)",
    signal.SIGFPE: "arithmetic fault in native code",
    signal.SIGILL: "illegal instruction in native code",
    signal.SIGKILL: "killed from outside the kernel (often the system's out-of-memory killer)",
    signal.SIGTERM: "terminated from outside the kernel",
}


@dataclass(frozen=True)
class Rollback:
    """What the worker that takes over holds: a snapshot's state (worker/snapshot.py),
    or, when ``why_not`` is set, nothing."""

    #: the snapshot's next cell: its state is the one before that cell ...
    before: int = 0
    #: ... and the cell that was running when the worker died (0: unknown)
    through: int = 0
    names: int = 0
    why_not: str = ""

    def lines(self, open_comms: int) -> list[str]:
        if self.why_not:
            lost = _lost_and_kept(open_comms)
            return [lost[0], f"No snapshot to roll back to: {self.why_not}.", *lost[1:]]
        several = self.through > self.before
        cells = f"cells [{self.before}..{self.through}]" if several else f"cell [{self.before}]"
        rerun = "The snapshot has taken over; re-run the cells after it that you need."
        if several:  # quick cells share a snapshot (worker/snapshot.py): how to have one before a cell
            rerun += " (Cells that ran briefly share one snapshot; `%snapshot now` takes one after a cell.)"
        return [(f"Rolled back to the state before {cells}: {self.names} name(s) kept (variables, imports, "
                 "functions), with the values they had then."),
                ("Not rolled back: files written, network side effects, and threads or child processes "
                 "started by the cells since."),
                f"Kept: the kernel, its execution count and history, and {open_comms} open comm(s).",
                rerun]


@dataclass(frozen=True)
class Death:
    """A worker's end: the exit, and the supervisor's own reason if it caused it."""

    exit: ExitInfo
    reason: str = ""  # set when the supervisor replaced the worker on purpose
    crash_log: str = ""  # faulthandler's output, when the worker left one
    restart: bool = False  # the user asked for it: not a crash
    #: what the worker wrote to fds 1/2 that was never forwarded, by stream name
    unread_output: dict[str, str] = field(default_factory=dict)
    #: the state the next worker starts from (None: a fresh worker, nothing said about it)
    rollback: Rollback | None = None

    def _after(self, open_comms: int) -> list[str]:
        return self.rollback.lines(open_comms) if self.rollback is not None else _lost_and_kept(open_comms)

    @property
    def evalue(self) -> str:
        what = self.exit.describe()
        if self.restart:
            return self.reason
        return f"{self.reason} ({what})" if self.reason else f"the worker process ended: {what}"

    def traceback(self, open_comms: int) -> list[str]:
        """Lines a frontend draws for the error (frontends show the traceback, not
        evalue): the whole explanation, so that a cell's error is the one place it is."""
        if self.restart:
            return [f"{WORKER_DIED}: {self.evalue}",
                    f"A fresh worker has taken over ({open_comms} open comm(s) kept)."]
        return [f"{WORKER_DIED}: {self.evalue}", f"Probable cause: {self.probable_cause()}.",
                *self._after(open_comms)]

    def last_words(self) -> str:
        """faulthandler's output, for the stream before the error ('' if none)."""
        block = self._last_words_block()
        return f"relaykernel: the worker process died. {block}\n" if block else ""

    def _last_words_block(self) -> str:
        return "Last words of the worker:\n" + _indent(self.crash_log.strip()) if self.crash_log.strip() else ""

    def probable_cause(self) -> str:
        if self.reason:
            return self.reason
        if self.exit.cause:
            return self.exit.cause
        code = self.exit.exitcode
        if code is not None and code < 0:
            try:
                return _CAUSES.get(signal.Signals(-code), f"signal {-code}")
            except ValueError:
                return f"signal {-code}"
        return f"the process exited with code {code} (for example os._exit({code}) or a fatal error)"

    def report(self, open_comms: int) -> str:
        if self.restart:
            return (f"relaykernel: {self.reason} while this request ran; a fresh worker has "
                    f"taken over ({open_comms} open comm(s) kept).\n")
        lines = [
            f"relaykernel: the worker process running your code died: {self.exit.describe()}.",
            f"Probable cause: {self.probable_cause()}.",
        ]
        if self.crash_log.strip():
            lines.append(self._last_words_block())
        return "\n".join(lines + self._after(open_comms)) + "\n"


def _lost_and_kept(open_comms: int) -> list[str]:
    return ["Lost: the worker's variables, imports and other state.",
            f"Kept: the kernel, its execution count and history, and {open_comms} open comm(s).",
            "A fresh worker has taken over; re-run the cells you need."]


def read_crash_log(path: str, head: int = 1500, tail: int = 2500) -> str:
    """The worker's faulthandler output ('' if none): its start, which names the
    fatal error, and its end, which holds the innermost frames of a deep stack.

    Called once its worker is dead, so the file is removed: a kernel that lives
    through many crashes keeps only the logs of its live workers, not one per
    worker it ever had (150 crashes left 158 files)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if len(data) > head + tail:
        data = data[:head] + b"\n    ...\n" + data[-tail:]
    return data.decode("utf-8", "replace")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
