"""relaykernel.worker.interrupts: an interrupt for a subshell's request that comes
before the request's user code runs still interrupts it (the frontend sees the cell's
execute_input first and may interrupt at once)."""

from __future__ import annotations

import threading
import time

from relaykernel.worker.interrupts import InterruptGate


def _run_in_thread(gate: InterruptGate, interrupt_before_user_code: bool) -> str:
    outcome: list[str] = []
    requested, interrupted = threading.Event(), threading.Event()

    def subshell() -> None:
        gate.thread_request()  # what WorkerKernel.handle does first
        requested.set()
        interrupted.wait(10)
        try:
            with gate.user_code():
                end = time.monotonic() + 1.0
                while time.monotonic() < end:  # bytecodes: an async exception lands here
                    pass
            outcome.append("ran to the end")
        except KeyboardInterrupt:
            outcome.append("interrupted")

    thread = threading.Thread(target=subshell, daemon=True)
    thread.start()
    assert requested.wait(10)
    if interrupt_before_user_code:
        gate.interrupt_threads()  # no thread in user code yet
    interrupted.set()
    thread.join(15)
    assert not thread.is_alive()
    return outcome[0]


def test_an_interrupt_before_the_user_code_interrupts_it() -> None:
    assert _run_in_thread(InterruptGate(), interrupt_before_user_code=True) == "interrupted"


def test_no_interrupt_no_keyboard_interrupt() -> None:
    gate = InterruptGate()
    gate.interrupt_threads()  # an interrupt before the request started is not its
    assert _run_in_thread(gate, interrupt_before_user_code=False) == "ran to the end"
