"""stdout/stderr of the worker as Jupyter stream messages.

``OutStream`` replaces ``sys.stdout``/``sys.stderr``.  Both write into one
:class:`OutputOrder`, which keeps what they wrote in the order it was written
(stderr never overtakes earlier stdout) and batches it: a print loop becomes a
few large messages, sent by the link's ticker thread after ``FLUSH_INTERVAL``, when
the batch grows past ``MAX_BATCH``, before any other output, and before the
reply.  The first line after a quiet spell leaves at once (it shows sooner, and
a crash right after does not take it along).  A user's ``flush()`` sends at
once only if nothing was sent in the last ``FLUSH_GAP``, else soon:
``print(i, flush=True)`` in a loop still batches (a message per line swamped
the supervisor and delayed interrupts by seconds), while a lone flushed print
still leaves at once.

Each piece of text is sent with the parent of the context that wrote it
(``current_parent``: the cell, or the asyncio task or thread a cell started),
so output of a background task goes to the cell that started it.

``FdCapture`` points file descriptors 1 and 2 at pipes and feeds what C
extensions, ``os.system`` and subprocesses write there into the same streams.

Threads: any thread may write; sends happen under the order's lock, so two
sends never reorder.

Forked children (multiprocessing's default start method on Linux before
Python 3.14, ``os.fork``) inherit these objects but not the threads behind
them, and must not touch the worker's zmq link.  :func:`after_fork_in_child`
turns their streams into plain writes to fds 1 and 2: those are the capture
pipes, which the worker's reader thread forwards, so what a child prints
shows up in the cell like a subprocess's output.
"""

from __future__ import annotations

import codecs
import ctypes
import fcntl
import io
import os
import select
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

#: Longest a written line waits before it is sent (seconds). Short enough to
#: feel live, long enough to batch a print loop into large messages.
FLUSH_INTERVAL = 0.05
#: Send at once when this many characters are waiting.
MAX_BATCH = 1 << 16
#: A user's flush() sends at once if nothing was sent for this long (seconds),
#: else it leaves the text to the next tick: a loop flushing every line makes
#: at most ~100 messages a second, and what it flushed before a crash is lost
#: only if it was flushed less than this after an earlier send.
FLUSH_GAP = 0.01
#: Most messages one send makes.  Output that switches between stdout and
#: stderr (or between cells' threads) more often than this in one batch is
#: merged per stream and parent, in the order each first wrote: written order
#: is then kept within each stream only, and a flood of alternating writes
#: cannot become a flood of messages.
MAX_SEGMENTS = 32

#: Publishes one stream message: (msg_type, content, parent)
Publish = Callable[[str, "dict[str, Any]", Any], None]


class OutputOrder:
    """What stdout and stderr wrote and have not sent yet, in written order.

    The pending text is a list of segments, one per run of writes with the
    same stream and parent; a send publishes them in order, one message each.
    """

    def __init__(self, publish: Publish, current_parent: Callable[[], Any] = lambda: None) -> None:
        self._publish = publish
        self._current_parent = current_parent
        self.lock = threading.RLock()
        self._segments: list[tuple[str, Any, list[str]]] = []
        self._size = 0
        self._since = 0.0  # when the oldest pending text was written
        #: when the last send happened, and whether the pending text began after a
        #: quiet spell (see add)
        self._sent_at = 0.0
        self._after_quiet = False

    def add(self, name: str, text: str) -> None:
        parent = self._current_parent()
        with self.lock:
            segments = self._segments
            if not segments:
                self._since = now = time.monotonic()
                self._after_quiet = now - self._sent_at >= FLUSH_INTERVAL
            last = segments[-1] if segments else None
            if last is not None and last[0] == name and last[1] is parent:
                last[2].append(text)
            else:
                segments.append((name, parent, [text]))
            self._size += len(text)
            # The first line after a quiet spell leaves at once: a line printed before
            # a long native call is then out even if that call crashes the worker
            # (a batch dies with the process), and it shows without the batch's wait.
            # A print loop still batches: its lines do not follow a quiet spell.
            if self._size >= MAX_BATCH or (self._after_quiet and "\n" in text):
                self._send_locked()

    def flush_soon(self) -> None:
        """A user's flush(): send now if nothing was sent in the last ``FLUSH_GAP``,
        else leave it to the next tick (at most ``FLUSH_INTERVAL`` away)."""
        with self.lock:
            if self._segments and (self._after_quiet or time.monotonic() - self._sent_at >= FLUSH_GAP):
                self._send_locked()

    def send_now(self) -> None:
        """Send everything pending (before other output, a reply, an exit)."""
        with self.lock:
            if self._segments:
                self._send_locked()

    def flush_if_due(self, now: float) -> None:
        """Called by the link's ticker thread (link.py, every ``TICK_INTERVAL``)."""
        if self._segments and now - self._since >= FLUSH_INTERVAL:
            self.send_now()

    def pending(self, name: str) -> bool:
        return any(segment[0] == name for segment in self._segments)

    def forget(self) -> None:
        """In a forked child: drop what the worker has pending (the worker sends it)
        and a lock some vanished thread may hold."""
        self.lock = threading.RLock()
        self._segments = []
        self._size = 0

    def _send_locked(self) -> None:
        segments = self._segments
        if len(segments) > MAX_SEGMENTS:
            segments = _merged(segments)
        self._segments = []
        self._size = 0
        self._sent_at = time.monotonic()
        for name, parent, parts in segments:
            self._publish("stream", {"name": name, "text": "".join(parts)}, parent)


def _merged(segments: list[tuple[str, Any, list[str]]]) -> list[tuple[str, Any, list[str]]]:
    """One segment per (stream, parent), in the order each first appears."""
    merged: dict[tuple[str, int], tuple[str, Any, list[str]]] = {}
    for name, parent, parts in segments:
        key = (name, id(parent))
        if key in merged:
            merged[key][2].extend(parts)
        else:
            merged[key] = (name, parent, list(parts))
    return list(merged.values())


class OutStream(io.TextIOBase):
    """A text stream whose writes become ``stream`` messages (through ``order``).

    Has what libraries probe on ipykernel's OutStream: ``name``, ``echo``,
    ``topic``, ``parent_header``, ``set_parent``, ``set_thread_parent``,
    ``_is_master_process()``."""

    #: ipykernel's streams can copy output to another file; these never do
    echo = None

    def __init__(self, name: str, order: OutputOrder, fileno: int | None = None,
                 parents: Any = None) -> None:
        super().__init__()
        self.name = name
        self.topic = f"stream.{name}".encode()
        self._order = order
        self._fileno = fileno
        #: the worker's Messenger (set_parent & co), None in tests
        self._parents = parents
        self._master_pid = os.getpid()
        self._lock = threading.RLock()
        self._parts: list[str] = []  # a forked child's line being assembled
        self._direct = False  # a forked child: write straight to the fd

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fileno is None:
            raise io.UnsupportedOperation("fileno")
        return self._fileno

    def _is_master_process(self) -> bool:
        """False in a forked child (ipykernel's name, which libraries check)."""
        return os.getpid() == self._master_pid

    # The parent header, as ipykernel's streams expose it; here one parent serves
    # every kind of output, so these are the Messenger's.
    @property
    def parent_header(self) -> dict[str, Any]:
        return self._parents.current().header if self._parents is not None else {}

    def set_parent(self, parent: dict[str, Any]) -> None:
        if self._parents is not None:
            self._parents.set_parent(parent)

    def set_thread_parent(self, parent: dict[str, Any]) -> Any:
        return self._parents.set_thread_parent(parent) if self._parents is not None else None

    def reset_thread_parent(self, token: Any) -> None:
        if self._parents is not None and token is not None:
            self._parents.reset_thread_parent(token)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        if self._direct:
            self._write_lines(text)
        else:
            self._order.add(self.name, text)
        return len(text)

    def flush(self) -> None:
        """Send soon (see the module docstring); :meth:`send_now` sends now."""
        if self._direct:
            self._write_lines("", whole=True)
        else:
            self._order.flush_soon()

    def send_now(self) -> None:
        """Send what is pending, of both streams, in written order."""
        if self._direct:
            self._write_lines("", whole=True)
        else:
            self._order.send_now()

    def flush_if_due(self, now: float) -> None:
        """Called by the link's ticker thread (link.py, every ``TICK_INTERVAL``)."""
        self._order.flush_if_due(now)

    def write_to_fd(self) -> None:
        """In a forked child: drop what the worker had batched (the worker sends it),
        forget a lock some vanished thread may hold, and write whole lines to the
        fd (no flush thread runs here; ``print`` writes a line in pieces, and
        pieces from several children would interleave)."""
        self._order.forget()
        self._lock = threading.RLock()
        self._parts = []
        self._direct = self._fileno is not None

    def resume_as_worker(self) -> None:
        """In a snapshot's child that became the worker (worker/snapshot.py): undo
        :meth:`write_to_fd`; this process is the master now."""
        self._order.forget()
        self._lock = threading.RLock()
        self._parts = []
        self._direct = False
        self._master_pid = os.getpid()

    def _write_lines(self, text: str, whole: bool = False) -> None:
        with self._lock:
            if text:
                self._parts.append(text)
            if not self._parts or (not whole and "\n" not in text):
                return
            pending = "".join(self._parts)
            cut = len(pending) if whole else pending.rindex("\n") + 1
            self._parts = [pending[cut:]] if cut < len(pending) else []
        _write_fd(self.fileno(), pending[:cut].encode("utf-8", "replace"))


class FdCapture:
    """Redirect fds 1 and 2 to pipes read by a thread into the OutStreams.

    All reads happen under ``_lock``, so :meth:`drain` can guarantee that every
    byte written before it was called has reached the streams.
    """

    def __init__(self, streams: dict[int, OutStream]) -> None:
        self._streams = streams
        self._lock = threading.Lock()
        self._pipes: dict[int, int] = {}
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in streams}
        self.saved: dict[int, int] = {}
        self._libc = _libc()

    def start(self) -> None:
        self._lock = threading.Lock()
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self._streams}
        for fd in self._streams:
            if fd not in self.saved:  # a restart keeps the fds the first start saved
                self.saved[fd] = os.dup(fd)
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            os.set_blocking(r, False)
            self._pipes[r] = fd
        threading.Thread(target=self._run, name="relaykernel-fd-capture", daemon=True).start()

    def _run(self) -> None:
        readers = list(self._pipes)
        while readers:
            ready, _, _ = select.select(readers, [], [])
            with self._lock:
                for r in ready:
                    if not self._read_all(r):
                        readers.remove(r)

    def _read_all(self, r: int) -> bool:
        fd = self._pipes[r]
        while True:
            try:
                data = os.read(r, 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                return False
            self._streams[fd].write(self._decoders[fd].decode(data))

    def read_ends(self) -> dict[str, int]:
        """The read end of each capture pipe, by stream name (for ReadyMeta)."""
        return {self._streams[fd].name: r for r, fd in self._pipes.items()}

    def restart(self) -> None:
        """In a snapshot's child that became the worker: capture again, into new
        pipes and a new reader thread; fds 1 and 2 are pointed at the new ones.
        The old pipes are the dead worker's: the child closed its copies of their
        read ends with the rest of the worker's plumbing (worker/snapshot.py), and
        their numbers may be in use again, so they are not closed here.  ``saved``
        stays: the original fds were inherited too."""
        self._pipes = {}
        self.start()

    def forget_pipes(self) -> None:
        """In a forked child: the pipes are the worker's to read."""
        self._lock = threading.Lock()
        self._pipes = {}

    def drain(self) -> None:
        """Flush C stdio buffers and move every pending byte into the streams."""
        if self._libc is not None:
            self._libc.fflush(None)
        with self._lock:
            for r in self._pipes:
                if _pending(r):
                    self._read_all(r)


def order_child_output(capture: FdCapture) -> None:
    """Make a child program's output land where the cell's code waited for it.

    ``print('a'); os.system('echo b'); print('c')``: ``b`` is in the capture pipe
    when os.system returns, but the reader thread may forward it only after
    ``c`` joined the stream (ipykernel shows ``a c b`` now and then too).  After
    ``os.system``, ``subprocess.Popen.wait`` (which ``run``, ``call``,
    ``check_call`` and ``communicate`` end with) and ``Process.join`` of
    multiprocessing and multiprocess (forked children print through the same
    pipes), the calling thread moves what the child wrote into the streams
    before the cell goes on: ~10 us per call."""
    import subprocess

    os.system = _draining(os.system, capture)
    targets: list[tuple[Any, str]] = [(subprocess.Popen, "wait")]
    for module in ("multiprocessing.process", "multiprocess.process"):  # both loaded already
        process = sys.modules.get(module)
        if process is not None:
            targets.append((process.BaseProcess, "join"))
    for cls, name in targets:
        setattr(cls, name, _draining(getattr(cls, name), capture))


def _draining(call: Callable[..., Any], capture: FdCapture) -> Callable[..., Any]:
    """``call``, then what children wrote to the capture pipes into the streams."""
    import functools

    @functools.wraps(call)
    def draining(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        finally:
            capture.drain()

    return draining


def after_fork_in_child(streams: tuple[OutStream, ...], capture: FdCapture | None) -> None:
    """See the module docstring; registered with ``os.register_at_fork`` by the worker."""
    for stream in streams:
        stream.write_to_fd()
    if capture is not None:
        capture.forget_pipes()


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except OSError:  # the worker is gone: nobody reads the pipe
            return


def _pending(fd: int) -> int:
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 1
    return int.from_bytes(buf, "little")


def _libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
