"""The worker's stream batching (relaykernel/worker/streams.py), in-process."""

from __future__ import annotations

import time
from typing import Any

from relaykernel.worker.streams import (
    FLUSH_GAP,
    FLUSH_INTERVAL,
    MAX_SEGMENTS,
    OutputOrder,
    OutStream,
)


class Recorder:
    """Stands in for the Messenger: records what would be published, and the parent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.parent: Any = "cell-1"

    def publish(self, msg_type: str, content: dict[str, Any], parent: Any) -> None:
        assert msg_type == "stream"
        self.sent.append((content["name"], content["text"], parent))

    def current(self) -> Any:
        return self.parent


def streams(busy: bool = True) -> tuple[Recorder, OutputOrder, OutStream, OutStream]:
    """``busy``: something was just sent, so no write follows a quiet spell."""
    rec = Recorder()
    order = OutputOrder(rec.publish, rec.current)
    if busy:
        order._sent_at = time.monotonic() + 3600
    return rec, order, OutStream("stdout", order), OutStream("stderr", order)


def test_the_first_line_after_a_quiet_spell_leaves_at_once_then_lines_batch():
    rec, order, out, _ = streams(busy=False)
    print("first", file=out)
    assert rec.sent == [("stdout", "first\n", "cell-1")]
    for i in range(3):
        print(i, file=out)
    assert len(rec.sent) == 1
    order.flush_if_due(time.monotonic() + FLUSH_INTERVAL)
    assert rec.sent[1:] == [("stdout", "0\n1\n2\n", "cell-1")]


def test_stderr_does_not_overtake_pending_stdout():
    rec, order, out, err = streams()
    print("a", file=out)
    print("b", file=err)
    print("c", file=out)
    err.write("d\n")
    assert rec.sent == []
    order.send_now()
    assert [(name, text) for name, text, _ in rec.sent] == [
        ("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n"), ("stderr", "d\n")]


def test_a_quiet_stderr_line_sends_the_stdout_before_it_first():
    rec, order, out, err = streams()
    print("line 1", file=out)
    order._sent_at = 0.0  # stdout's batch began after a quiet spell: the next line leaves now
    order._after_quiet = True
    print("warning", file=err)
    assert [(name, text) for name, text, _ in rec.sent] == [("stdout", "line 1\n"), ("stderr", "warning\n")]


def test_flushing_every_line_of_a_loop_waits_for_the_tick():
    rec, order, out, _ = streams()
    for i in range(1000):
        print(i, file=out, flush=True)
    assert rec.sent == []
    order.flush_if_due(time.monotonic() + FLUSH_INTERVAL)
    assert len(rec.sent) == 1
    assert rec.sent[0][1].split() == [str(i) for i in range(1000)]


def test_a_flush_some_time_after_the_last_send_sends_at_once():
    rec, order, out, _ = streams()
    print("a", file=out, flush=True)
    assert rec.sent == []
    order._sent_at = time.monotonic() - FLUSH_GAP
    print("b", file=out, flush=True)
    assert rec.sent == [("stdout", "a\nb\n", "cell-1")]


def test_a_lone_flush_after_a_quiet_spell_sends_a_partial_line_at_once():
    rec, _, out, _ = streams(busy=False)
    print("working...", end="", file=out, flush=True)
    assert rec.sent == [("stdout", "working...", "cell-1")]


def test_text_goes_with_the_parent_of_its_writer():
    rec, order, out, _ = streams()
    print("one", file=out)
    rec.parent = "cell-2"
    print("two", file=out)
    rec.parent = "cell-1"
    print("three", file=out)
    order.send_now()
    assert rec.sent == [("stdout", "one\n", "cell-1"), ("stdout", "two\n", "cell-2"),
                        ("stdout", "three\n", "cell-1")]


def test_a_flood_alternating_streams_is_merged_per_stream():
    rec, order, out, err = streams()
    for i in range(MAX_SEGMENTS):
        print(f"o{i}", file=out)
        print(f"e{i}", file=err)
    order.send_now()
    assert [(name, text.split()) for name, text, _ in rec.sent] == [
        ("stdout", [f"o{i}" for i in range(MAX_SEGMENTS)]),
        ("stderr", [f"e{i}" for i in range(MAX_SEGMENTS)])]
