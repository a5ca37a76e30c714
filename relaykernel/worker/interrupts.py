"""When a signal may interrupt the worker's main thread: only inside user code.

SIGINT (an interrupt) and SIGUSR1 (the soft memory limit) raise in the cell
that runs user code.  Anywhere else -- waiting for the next request, parsing
it, sending its reply -- an exception would lose a reply or kill the worker,
so the signal is only remembered: if it arrived while a request was being
handled, the request's user code is interrupted as soon as it starts; if it
arrived while the worker was idle, there is nothing to interrupt.

Inside user code SIGINT is Python's own ``default_int_handler``, as in
ipykernel: the KeyboardInterrupt's traceback shows the user's line and no
frame of ours, and ``signal.getsignal`` returns what libraries expect.

Runs in the worker's main thread (Python runs signal handlers there).  User
code on other threads -- subshells (subshells.py) -- registers here too: an
interrupt is kernel-wide, and the supervisor sends subshells theirs on the side
socket (wire.INTERRUPT), since a signal reaches the main thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

from .. import wire


class InterruptGate:
    def __init__(self, memory_error: Callable[[], BaseException] | None = None) -> None:
        self._open = False
        self._idle = True
        self._pending = False
        self._on_interrupt: Callable[[], None] | None = None
        self.memory_error = memory_error  # set when a soft memory limit is configured
        #: the MemoryError the soft limit raised in the running cell (see release_memory_error)
        self._raised_memory_error: BaseException | None = None
        #: threads other than the main one in user code -> what interrupts them
        #: (None: a KeyboardInterrupt raised in the thread)
        self._threads: dict[int, Callable[[], None] | None] = {}
        #: threads other than the main one whose request started but whose user code
        #: has not -> interrupts counted then: one since is theirs (_thread_user_code)
        self._starting: dict[int, int] = {}
        self._interrupts = 0
        self._threads_lock = threading.Lock()  # an interrupt and a thread's way in: one delivers

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def idle(self) -> None:
        """The worker waits for a request: interrupts now have nothing to interrupt."""
        self._idle = True
        self._pending = False

    def busy(self) -> None:
        """A request arrived: an interrupt from now on is meant for it."""
        self._idle = False

    @contextlib.contextmanager
    def user_code(self, on_interrupt: Callable[[], None] | None = None) -> Iterator[None]:
        """Signals raise inside this block (and a pending interrupt fires at once).

        ``on_interrupt``: call this instead of raising (a cell awaiting in the
        event loop, where an exception would leave the loop, not the cell).
        Inside a block that is open already (a comm message handled while the
        cell awaits) the outer block's rules stay."""
        if threading.current_thread() is not threading.main_thread():
            with self._thread_user_code(on_interrupt):
                yield
            return
        if self._open:
            yield
            return
        # signal.signal() first runs the handlers of signals already caught, so an
        # interrupt may raise on the way in (it interrupts this cell: fine) or on the
        # way out; the gate's state is set and reset where no exception can skip it.
        try:
            self._open = True
            self._on_interrupt = on_interrupt
            if on_interrupt is None:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            else:
                signal.signal(signal.SIGINT, lambda signum, frame: on_interrupt())
            if self._pending:
                self._pending = False
                os.kill(os.getpid(), signal.SIGINT)  # raised at the next bytecode, in the cell
            yield
        finally:
            self._open = False  # first: a store runs no signal handler
            self._on_interrupt = None
            self._close()

    def _close(self) -> None:
        """Put the gate's own SIGINT handler back.  A SIGINT caught just as user code
        ended is run by the handler being replaced (Python's, which raises), inside
        ``signal.signal``: before this loop, that KeyboardInterrupt left the cell's
        handler installed, and the next interrupt killed the idle worker (seen under
        load: one worker in ~13 lost to 20 interrupts racing short cells).  Such a
        late interrupt is remembered as one that came between the request's steps."""
        while True:
            try:
                signal.signal(signal.SIGINT, self._on_sigint)
                return
            except KeyboardInterrupt:
                if not self._idle:
                    self._pending = True

    def thread_request(self) -> None:
        """A thread other than the main one (a subshell's) starts a request: an interrupt
        from now on is meant for it, also one that comes before its user code runs (the
        cell's execute_input is out by then: a frontend may interrupt it at once).  The
        main thread has busy() and its pending interrupt for this."""
        if threading.current_thread() is not threading.main_thread():
            with self._threads_lock:
                self._starting[threading.get_ident()] = self._interrupts

    @contextlib.contextmanager
    def _thread_user_code(self, on_interrupt: Callable[[], None] | None) -> Iterator[None]:
        ident = threading.get_ident()
        outer = ident in self._threads
        if not outer:
            with self._threads_lock:
                self._threads[ident] = on_interrupt
                started = self._starting.pop(ident, None)
                if started is not None and started < self._interrupts:  # interrupted on its way in
                    self._interrupt_thread(ident, on_interrupt)
        try:
            yield
        finally:
            if not outer:
                self._threads.pop(ident, None)

    def interrupt_threads(self) -> None:
        """Every other thread in user code gets a KeyboardInterrupt at its next bytecode
        (an awaiting cell: its task is cancelled).  One blocked in a C call (sleep,
        a lock) sees it when the call returns."""
        with self._threads_lock:
            self._interrupts += 1
            threads = list(self._threads.items())
        for ident, on_interrupt in threads:
            self._interrupt_thread(ident, on_interrupt)

    @staticmethod
    def _interrupt_thread(ident: int, on_interrupt: Callable[[], None] | None) -> None:
        if on_interrupt is not None:
            on_interrupt()
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))

    def busy_threads(self) -> bool:
        return bool(self._threads)

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self._open:
            raise KeyboardInterrupt
        if not self._idle:
            self._pending = True

    def _on_sigusr1(self, signum: int, frame: object) -> None:
        if self._open and self.memory_error is not None:
            if self._on_interrupt is not None:
                self._on_interrupt()
            else:
                self._raised_memory_error = error = self.memory_error()
                raise error

    def release_memory_error(self) -> None:
        """After a cell: let go of what the soft limit's MemoryError holds.

        The signal raises wherever the cell's code is, often in a library's function
        that holds the very array that passed the limit (numpy's ``ones`` has it in a
        local once ``copyto`` returns).  The traceback keeps that frame, and IPython
        keeps the traceback (``sys.last_traceback``, for ``%debug``), so the memory
        the cell was stopped for would stay, and the idle worker over the limit.
        The frames' locals are cleared (``%debug`` then shows none); the user's
        variables, the cell's globals, stay.  A generator's or coroutine's frame is
        left alone: clearing it would close one the user may hold."""
        error, self._raised_memory_error = self._raised_memory_error, None
        tb = error.__traceback__ if error is not None else None
        while tb is not None:  # from the frame that caught it to the one it was raised in
            frame, flags = tb.tb_frame, tb.tb_frame.f_code.co_flags
            if not flags & _SUSPENDABLE:
                with contextlib.suppress(RuntimeError):  # a frame still running
                    frame.clear()
                    if flags & inspect.CO_OPTIMIZED:
                        # A function's frame keeps the dict its f_locals made (IPython's
                        # traceback reads it) past clear() before Python 3.13; read
                        # again, it drops the names clear() unbound.  (A module's or
                        # class's f_locals is its namespace: not touched.)
                        frame.f_locals  # noqa: B018
            tb = tb.tb_next


#: code flags of frames that outlive a call (generators, coroutines, async generators)
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


#: The signals only the main thread may take (every other thread of the worker
#: blocks them): SIGINT (an interrupt) and SIGUSR1 (the soft memory limit) raise in
#: the cell, wire.STACK_SIGNAL writes the cell's stack.  Linux hands a process's
#: signal to any thread that does not block it, and one handed to a helper thread
#: would leave a cell in time.sleep() or a blocking call asleep.
MAIN_THREAD_SIGNALS = frozenset({signal.SIGINT, signal.SIGUSR1, wire.STACK_SIGNAL})


def write_stack_on_signal(crash_log: TextIO) -> None:
    """Write the main thread's Python stack to ``crash_log`` on wire.STACK_SIGNAL.

    faulthandler writes it from the C signal handler, so a cell stuck in a C call
    that never returns to Python (a lock, a native loop, a sleep with SIGINT
    ignored) still says where it is.  The signal must be blocked in every other
    thread (main.py), or the stack written would be a helper thread's."""
    faulthandler.register(wire.STACK_SIGNAL, file=crash_log, all_threads=False, chain=False)
