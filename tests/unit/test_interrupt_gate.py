"""The worker's InterruptGate when a SIGINT lands on the gate's own edges.

``signal.signal`` first runs the Python handlers of signals already caught, with
the handler being replaced.  So an interrupt that comes just as user code starts
or ends raises inside the gate's own switch of handlers.  These tests send a real
SIGINT (``signal.raise_signal``) at exactly that moment, in this process, and
check the gate still ends closed with its own handler installed: an idle worker
must never raise on an interrupt (it would die between requests; seen under
load in tests/kernel/test_lifecycle.py's racing interrupts).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relaykernel.worker import interrupts
from relaykernel.worker.interrupts import InterruptGate


@pytest.fixture
def gate() -> Iterator[InterruptGate]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    gate = InterruptGate()
    gate.install()
    try:
        yield gate
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _interrupt_before(monkeypatch: pytest.MonkeyPatch, installing: Callable[[Any], bool]) -> list[int]:
    """Make the gate's next ``signal.signal`` call that installs a handler for which
    ``installing(handler)`` holds receive a real SIGINT first."""
    real_signal = signal.signal
    fired: list[int] = []

    def signal_after_an_interrupt(signum: int, handler: Any) -> Any:
        if signum == signal.SIGINT and installing(handler) and not fired:
            fired.append(signum)
            signal.raise_signal(signal.SIGINT)  # run by the handler installed now
        return real_signal(signum, handler)

    monkeypatch.setattr(interrupts.signal, "signal", signal_after_an_interrupt)
    return fired


def _idle_interrupt_is_harmless(gate: InterruptGate) -> None:
    gate.idle()
    signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt if the gate stayed open


def test_an_interrupt_as_user_code_ends_leaves_the_gate_closed(gate, monkeypatch) -> None:
    fired = _interrupt_before(monkeypatch, lambda handler: handler == gate._on_sigint)
    gate.busy()
    try:
        with gate.user_code():
            pass
    except KeyboardInterrupt:
        pass  # the old gate raised here, and left Python's handler installed
    assert fired
    assert signal.getsignal(signal.SIGINT) == gate._on_sigint
    assert not gate._open
    _idle_interrupt_is_harmless(gate)


def test_an_interrupt_as_user_code_starts_interrupts_it_and_closes_the_gate(gate, monkeypatch) -> None:
    fired = _interrupt_before(monkeypatch, lambda handler: handler is signal.default_int_handler)
    gate.busy()
    ran = []
    # it interrupts the cell that was starting
    with pytest.raises(KeyboardInterrupt), gate.user_code():
        ran.append(True)
    assert fired and not ran
    assert signal.getsignal(signal.SIGINT) == gate._on_sigint
    assert not gate._open
    _idle_interrupt_is_harmless(gate)


def test_interrupts_in_user_code_and_while_idle(gate) -> None:
    """The contrast: inside user code an interrupt raises; idle, it is dropped."""
    gate.busy()
    with pytest.raises(KeyboardInterrupt), gate.user_code():
        signal.raise_signal(signal.SIGINT)
    _idle_interrupt_is_harmless(gate)
