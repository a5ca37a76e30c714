"""stdout/stderr of the worker as Jupyter stream messages.

``OutStream`` replaces ``sys.stdout``/``sys.stderr``: writes are batched (a
print loop becomes a few large messages) and flushed by the link's IO thread
after ``FLUSH_INTERVAL``, when the batch grows past ``MAX_BATCH``, before any
other output, and before the reply.  ``FdCapture`` points file descriptors 1
and 2 at pipes and feeds what C extensions, ``os.system`` and subprocesses
write there into the same streams.

Threads: any thread may write; flushes hold the stream's lock while sending so
two flushes of one stream never reorder.
"""

from __future__ import annotations

import codecs
import ctypes
import fcntl
import io
import os
import select
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
        with self._lock:
            if not self._parts:
                self._since = time.monotonic()
            self._parts.append(text)
            self._size += len(text)
            if self._size >= MAX_BATCH:
                self._send_locked()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._parts:
                self._send_locked()

    def flush_if_due(self, now: float) -> None:
        """Called by the IO thread's ticker."""
        if self._parts and now - self._since >= FLUSH_INTERVAL:
            self.flush()

    def _send_locked(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
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

    def drain(self) -> None:
        """Flush C stdio buffers and move every pending byte into the streams."""
        if self._libc is not None:
            self._libc.fflush(None)
        with self._lock:
            for r in self._pipes:
                if _pending(r):
                    self._read_all(r)


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
