"""stdout/stderr of the worker as Jupyter stream messages.

``OutStream`` replaces ``sys.stdout``/``sys.stderr``: writes are batched (a
print loop becomes a few large messages) and flushed by the link's IO thread
after ``FLUSH_INTERVAL``, when the batch grows past ``MAX_BATCH``, before any
other output, and before the reply; the first line after a quiet spell leaves
at once (it shows sooner, and a crash right after does not take it along).
``FdCapture`` points file descriptors 1 and 2 at pipes and feeds what C
extensions, ``os.system`` and subprocesses write there into the same streams.

Threads: any thread may write; flushes hold the stream's lock while sending so
two flushes of one stream never reorder.

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


class OutStream(io.TextIOBase):
    """A text stream whose writes become ``stream`` messages."""

    def __init__(self, name: str, publish: Callable[[str, dict[str, Any]], None], fileno: int | None = None) -> None:
        super().__init__()
        self.name = name
        self._publish = publish
        self._fileno = fileno
        self._lock = threading.RLock()
        self._parts: list[str] = []
        self._size = 0
        self._since = 0.0
        #: when the last batch left, and whether the one being filled began after a
        #: quiet spell (see write)
        self._sent_at = 0.0
        self._after_quiet = False
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

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        if self._direct:
            self._write_lines(text)
            return len(text)
        with self._lock:
            if not self._parts:
                self._since = now = time.monotonic()
                self._after_quiet = now - self._sent_at >= FLUSH_INTERVAL
            self._parts.append(text)
            self._size += len(text)
            # The first line after a quiet spell leaves at once: a line printed before
            # a long native call is then out even if that call crashes the worker
            # (a batch dies with the process), and it shows without the batch's wait.
            # A print loop still batches: its lines do not follow a quiet spell.
            if self._size >= MAX_BATCH or (self._after_quiet and "\n" in text):
                self._send_locked()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._parts:
                if self._direct:
                    self._write_lines("", whole=True)
                else:
                    self._send_locked()

    def flush_if_due(self, now: float) -> None:
        """Called by the IO thread's ticker."""
        if self._parts and now - self._since >= FLUSH_INTERVAL:
            self.flush()

    def write_to_fd(self) -> None:
        """In a forked child: drop what the worker had batched (the worker sends it),
        forget a lock some vanished thread may hold, and write whole lines to the
        fd (no flush thread runs here; ``print`` writes a line in pieces, and
        pieces from several children would interleave)."""
        self._lock = threading.RLock()
        self._parts = []
        self._size = 0
        self._direct = self._fileno is not None

    def _write_lines(self, text: str, whole: bool = False) -> None:
        with self._lock:
            self._parts.append(text)
            if not whole and "\n" not in text:
                return
            pending = "".join(self._parts)
            cut = len(pending) if whole else pending.rindex("\n") + 1
            self._parts = [pending[cut:]] if cut < len(pending) else []
        _write_fd(self.fileno(), pending[:cut].encode("utf-8", "replace"))

    def _send_locked(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._sent_at = time.monotonic()
        self._publish("stream", {"name": self.name, "text": text})


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
        for fd in self._streams:
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
