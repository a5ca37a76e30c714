"""The worker's end of the link: one PAIR socket, shared under a lock.

Threads: any thread (the main thread running cells, stream flushers, the
fd-capture reader, user threads) sends straight onto the PAIR socket while
holding ``_lock``, so everything leaves whole and in the order it was sent.
Only the main thread receives, in :meth:`Link.receive`: it waits on the
socket's ``ZMQ_FD`` *outside* the lock (a zmq socket may be used by one
thread at a time, but its FD may be waited on by anyone), then takes the lock
to read.  No thread sits between the socket and the code that runs a request
or sends its outputs: a thread hand-off costs a wake-up and a GIL switch each
way, which was a third of a comm echo's time in the worker.

``ZMQ_FD`` is edge-triggered: any operation on the socket, a send included,
may consume the edge that announced a message.  So a sender that finds input
waiting after its send wakes a receiver that is blocked (``_nudge``), and
the receiver always checks ``ZMQ_EVENTS`` before it blocks.

The serving loop waits in :meth:`Link.receive_async`, on an asyncio event
loop, so tasks that cells start (``asyncio.create_task``, ipywidgets' async
patterns) run between requests, as under ipykernel; ``input()`` still blocks
in :meth:`Link.receive`.

Signals wake the receiver too, through a pipe of their own
(``signal.set_wakeup_fd``).  Python runs a signal's handler in the main
thread only once that thread leaves the system call it is in, and a signal
that lands just before the thread enters ``select`` -- or on another thread
-- does not interrupt it: an interrupt of ``input()`` would wait for a reply
that never comes.  The wakeup fd is the process's one, and user code's to
take (trio sets it for its run and warns if one is set already; asyncio's
``add_signal_handler`` sets it), so the link holds it only while the main
thread waits in the link, and forwards what it read to the wakeup fd it
found there, which is back when the wait ends.

A small thread runs the ``tickers`` (stream flushes) every TICK_INTERVAL.

Must not import IPython.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import zmq

from .. import pipes, transport, wire

log = logging.getLogger("relaykernel.worker")

#: How often the tickers (stream flushes) run (seconds).
TICK_INTERVAL = 0.05
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


def _only_self_pipe(loop: asyncio.AbstractEventLoop) -> int | None:
    """The loop's self-pipe fd if the loop has nothing else to do, else None.

    Reads asyncio's selector loop internals (``_ready``, ``_scheduled``,
    ``_selector``); a loop without them always takes the loop's own wait."""
    ready, scheduled = getattr(loop, "_ready", None), getattr(loop, "_scheduled", None)
    selector = getattr(loop, "_selector", None)
    if ready is None or scheduled is None or selector is None or ready or scheduled:
        return None
    fds = list(selector.get_map())
    return fds[0] if len(fds) == 1 else None


#: zmq objects of a worker this process was forked from: closing them would touch
#: the dead worker's context (see Link.reopen), so they are kept from the collector
_abandoned: list[Any] = []


def _set_wakeup_fd(fd: int) -> int:
    """Put a wakeup fd back; -1 if it is no longer usable (its owner closed it).

    warn_on_full_buffer=False: set_wakeup_fd does not tell how it was set, and a
    full wakeup buffer only means that a wake is pending already."""
    try:
        return signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        return signal.set_wakeup_fd(-1)


def _start_zmq_gc() -> None:
    """Start pyzmq's garbage collector thread now, outside any request.  pyzmq starts it
    at the first large frame sent without a copy (a comm's buffers): started then, in a
    comm handler, the thread would record that request as its parent (messages.py) and
    hold the request, its large buffers with it, for the worker's whole life."""
    try:
        from zmq.utils.garbage import gc

        if not gc.is_alive():
            gc.start()
    except Exception as e:  # noqa: BLE001 - pyzmq starts it when it needs it, as before
        log.debug("could not start pyzmq's garbage collector: %s", e)


class Link:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self._ctx = ctx
        self._pair = ctx.socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 2000)
        self._pair.setsockopt(zmq.SNDHWM, 0)  # never drop an output
        #: larger kernel buffers on the connection, set at the first send after it is made
        self._buffers = transport.SocketBuffers(self._pair, bound=False)
        #: a REQUEST's large buffers, from the supervisor's shared region (transport.py)
        self.shared = transport.SharedIn()
        self._pair.connect(endpoint)
        self._fd = self._pair.getsockopt(zmq.FD)
        self._lock = threading.Lock()
        self._waiting = False  # the main thread is blocked in receive()
        self._nudge_r, self._nudge_w = os.pipe()
        #: what signals write to while the main thread waits in the link
        self._signal_r, self._signal_w = os.pipe()
        for fd in (self._nudge_r, self._nudge_w, self._signal_r, self._signal_w):
            os.set_blocking(fd, False)
        #: the wakeup fd the link found when its wait began (-1: none), while it waits
        self._outer_wakeup_fd = -1
        #: messages read while the main thread wanted another kind (a request
        #: that arrived while input() waited for its reply), in arrival order
        self._kept: collections.deque[wire.LinkMessage] = collections.deque()
        self.tickers: list[Callable[[], None]] = []
        #: told why, when a message from the supervisor cannot be decoded and is
        #: dropped, so the user learns of it (main.py writes it to stderr)
        self.on_malformed: Callable[[str], object] | None = None
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="relaykernel-flush", daemon=True)

    @property
    def context(self) -> zmq.Context:
        """The zmq context of the link's socket (the side socket shares it)."""
        return self._ctx

    def start(self) -> None:
        """Start the ticker thread, and pyzmq's garbage collector thread (see _start_zmq_gc)."""
        self._ticker.start()
        _start_zmq_gc()

    # ---------------------------------------------------------------- sending
    def send(self, kind: bytes, meta: Mapping[str, Any] | None = None, payload: Sequence[Any] = ()) -> None:
        """Send a link message to the supervisor; safe from any thread."""
        frames = wire.encode(kind, meta, payload)
        with self._lock:
            if self._buffers.pending:
                self._buffers.apply()
            wire.send_frames(self._pair, frames)
            input_waiting = self._pair.getsockopt(_EVENTS) & _POLLIN
        if input_waiting and self._waiting:
            self._nudge()

    def leave_to_parent(self) -> None:
        """In a forked child: the socket and libzmq's IO thread are the worker's (zmq
        sockets do not survive a fork), so messages other than printed text,
        which goes by the fd (streams.py), are dropped, with one notice."""
        notice = [(b"relaykernel: display output and comm messages from a forked child process "
                   b"are not shown (what it prints is)\n")]

        def send(kind: bytes, meta: Mapping[str, Any] | None = None, payload: Sequence[Any] = ()) -> None:
            if notice:
                try:
                    os.write(2, notice.pop())
                except OSError:
                    pass

        self.send = send  # type: ignore[method-assign]

    def _nudge(self) -> None:
        try:
            os.write(self._nudge_w, b"!")
        except BlockingIOError:  # the pipe is full of nudges already
            pass

    # -------------------------------------------------------------- receiving
    def receive(self, kinds: Collection[bytes] | None = None) -> wire.LinkMessage:
        """Main thread only: the next link message (of one of ``kinds``; others
        are kept, in order, for a later call).  Blocks until one arrives."""
        while True:
            lm = self._receive_nowait(kinds)
            if lm is not None:
                return lm
            self._select((self._fd, self._nudge_r))

    async def receive_async(self, kinds: Collection[bytes]) -> wire.LinkMessage:
        """Main thread, in the running event loop: :meth:`receive` that lets other tasks run while it waits."""
        while True:
            lm = self._receive_nowait(kinds)
            if lm is not None:
                return lm
            await self._readable()

    async def wait_async(self, timeout: float) -> None:
        """Main thread, in the running event loop: until a message may be waiting, or
        ``timeout`` seconds passed (the worker waits this way before a snapshot)."""
        if self.input_waiting(()):
            return
        loop = asyncio.get_running_loop()
        self_pipe = _only_self_pipe(loop)
        if self_pipe is not None:  # nothing else to run: no loop turns, no timer left behind
            self._select((self._fd, self._nudge_r, self_pipe), timeout)
            return
        timer = loop.call_later(timeout, lambda: None)  # a timer: _readable takes the loop's wait
        try:
            await asyncio.wait_for(self._readable(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            timer.cancel()

    def input_waiting(self, kinds: Collection[bytes]) -> bool:
        """Whether a message of ``kinds`` was kept, or any is waiting on the socket (never blocks)."""
        if any(lm.kind in kinds for lm in self._kept):
            return True
        with self._lock:
            return bool(self._pair.getsockopt(_EVENTS) & _POLLIN)

    def _receive_nowait(self, kinds: Collection[bytes] | None) -> wire.LinkMessage | None:
        """A kept or waiting message of one of ``kinds`` (any if None), or None at once."""
        for lm in self._kept:
            if kinds is None or lm.kind in kinds:
                self._kept.remove(lm)
                return lm
        while True:
            with self._lock:
                frames = self._read() if self._pair.getsockopt(_EVENTS) & _POLLIN else None
            if frames is None:
                return None
            try:
                lm = self._decode(frames)
            except wire.WireError as e:
                log.warning("dropped a malformed link message: %s", e)
                if self.on_malformed is not None:
                    self.on_malformed(str(e))
                continue
            if kinds is None or lm.kind in kinds:
                return lm
            if lm.kind == wire.INPUT_REPLY:  # only the newest can answer the next prompt
                self.discard_kept(wire.INPUT_REPLY)
            self._kept.append(lm)

    async def _readable(self) -> None:
        """Until the socket (or a nudge, or a signal) may have something; see the module docstring.

        When the loop has nothing else to run (no callbacks, timers or other fds:
        no task of the user's is waiting on anything), this blocks in ``select``
        itself, also watching the loop's self-pipe (another thread scheduling a
        callback): the same wait without the loop's turns around it, which kept
        the worker's main thread busy right after it sent a reply, when libzmq's
        IO thread needs the CPU to write it (~100 us per comm echo).
        """
        loop = asyncio.get_running_loop()
        self_pipe = _only_self_pipe(loop)
        if self_pipe is not None:
            self._select((self._fd, self._nudge_r, self_pipe))
            return
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        def nudged() -> None:
            self._drain_nudges()
            wake()

        def signalled() -> None:
            self._pass_on_signals()
            wake()

        self._waiting = True  # before the check: a sender reads it after its send
        loop.add_reader(self._fd, wake)
        loop.add_reader(self._nudge_r, nudged)
        loop.add_reader(self._signal_r, signalled)
        try:
            with self._woken_by_signals():
                with self._lock:
                    waiting = self._pair.getsockopt(_EVENTS) & _POLLIN
                if not waiting:
                    await ready
        finally:
            self._waiting = False
            loop.remove_reader(self._fd)
            loop.remove_reader(self._nudge_r)
            loop.remove_reader(self._signal_r)

    def _select(self, fds: tuple[int, ...], timeout: float | None = None) -> None:
        """Block until the socket may have a message (or another of ``fds`` is readable),
        or ``timeout`` seconds passed."""
        self._waiting = True  # before the check: a sender reads it after its send
        try:
            with self._woken_by_signals():
                with self._lock:
                    waiting = self._pair.getsockopt(_EVENTS) & _POLLIN
                if not waiting:
                    readable, _, _ = select.select((*fds, self._signal_r), [], [], timeout)
                    if self._nudge_r in readable:  # most wakes are the socket's, no nudge to read
                        self._drain_nudges()
                    if self._signal_r in readable:
                        self._pass_on_signals()
        finally:
            self._waiting = False

    @contextlib.contextmanager
    def _woken_by_signals(self) -> Iterator[None]:
        """While the main thread waits in the link, a signal also writes to the link's
        signal pipe; the wakeup fd found there is put back afterwards (see the
        module docstring), unless the wait set another (a user's task did)."""
        try:
            outer = signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals wake only the main thread's waits
            yield
            return
        if outer == self._signal_w:  # a wait inside a wait (input() in a task): the outer restores
            yield
            return
        self._outer_wakeup_fd = outer
        try:
            yield
        finally:
            self._outer_wakeup_fd = -1
            current = _set_wakeup_fd(outer)
            if current != self._signal_w:  # set during the wait: that one stays
                _set_wakeup_fd(current)
            self._pass_on_signals(outer)  # any that came just before the swap

    def _pass_on_signals(self, outer: int | None = None) -> None:
        """Empty the signal pipe, and write what it held (one byte per signal, its
        number) to the wakeup fd the link found, so its owner learns of them too."""
        outer = self._outer_wakeup_fd if outer is None else outer
        data = b""
        try:
            while chunk := os.read(self._signal_r, 512):
                data += chunk
        except BlockingIOError:
            pass
        if outer != -1 and data:
            try:
                os.write(outer, data)
            except OSError:  # full (a wake is pending there already) or closed
                pass

    def discard_kept(self, kind: bytes) -> None:
        """Forget kept messages of one kind (input replies to an older prompt)."""
        self._kept = collections.deque(lm for lm in self._kept if lm.kind != kind)

    def _read(self) -> list[Any]:
        """One whole multipart message; completed even if a signal interrupts it."""
        frames = [self._pair.recv(copy=False)]
        try:
            while frames[-1].more:
                frames.append(self._pair.recv(copy=False))
        except BaseException:
            while frames[-1].more:  # leave no half message in the socket
                frames.append(self._pair.recv(copy=False))
            self._kept.append(self._decode(frames))
            raise
        return frames

    def _decode(self, frames: list[Any]) -> wire.LinkMessage:
        """wire.decode, with a REQUEST's buffers from the shared region in place."""
        lm = wire.decode(frames)
        if lm.kind != wire.REQUEST or "shared" not in lm.meta:
            return lm
        try:
            payload = self.shared.resolve(lm.meta, lm.payload)
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            # the request still runs (its DONE frees the region), without those buffers
            log.warning("could not read a request's large buffers from shared memory: %s", e)
            if self.on_malformed is not None:
                self.on_malformed(f"a request's large buffers could not be read from shared memory ({e})")
            payload = list(lm.payload)
        return wire.LinkMessage(lm.kind, lm.meta, payload)

    def _drain_nudges(self) -> None:
        pipes.drain(self._nudge_r)

    # ---------------------------------------------------------------- tickers
    def _tick(self) -> None:
        while not self._stopped.wait(TICK_INTERVAL):
            try:
                self.shared.tick()
            except Exception:
                log.exception("letting go of the shared buffers failed")
            for tick in self.tickers:
                try:
                    tick()
                except Exception:
                    log.exception("link ticker failed")

    def reopen(self, endpoint: str) -> None:
        """In a snapshot's child, woken to become a worker (worker/snapshot.py): a new
        context, socket, pipes and ticker thread.  The old ones are the dead worker's
        (a zmq context does not survive a fork) and are left alone, never closed."""
        self.__dict__.pop("send", None)  # leave_to_parent's, from the fork
        _abandoned.append((self._ctx, self._pair, self._buffers))
        tickers, on_malformed = self.tickers, self.on_malformed
        self.__init__(zmq.Context(), endpoint)  # type: ignore[misc]
        self.tickers, self.on_malformed = tickers, on_malformed
        self._ticker.start()
        _start_zmq_gc()

    def close(self, linger: int = 0) -> None:
        """Close the socket (and its buffers' monitor, or the context's term would wait on it)."""
        with self._lock:
            self._buffers.close()
            self._pair.close(linger=linger)

    def flush_and_stop(self, timeout: float = 2.0) -> None:
        """Stop the tickers and let what was sent reach the supervisor (the worker is exiting)."""
        self._stopped.set()
        self._ticker.join(timeout)
        self.close(linger=int(timeout * 1000))
        try:
            self._ctx.term()  # returns once the queued messages are written, or linger passed
        except zmq.ZMQError:
            pass
