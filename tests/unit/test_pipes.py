"""relaykernel.pipes: emptying a wake-up pipe."""

from __future__ import annotations

import os
import select

import pytest

from relaykernel import pipes


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_drain_empties_a_pipe_of_any_size(pipe) -> None:
    r, w = pipe
    os.write(w, b"x" * 10_000)  # more than one read's worth
    assert _readable(r)
    pipes.drain(r)
    assert not _readable(r)
    pipes.drain(r)  # empty: returns at once
    os.write(w, b"x")
    pipes.drain(r)
    assert not _readable(r)


def test_drain_returns_when_the_writer_is_gone(pipe) -> None:
    r, w = pipe
    os.write(w, b"xy")
    os.close(w)
    pipes.drain(r)
    assert os.read(r, 1) == b""  # nothing left but the end


def test_drain_of_a_closed_fd_is_the_callers_error(pipe) -> None:
    r, _ = pipe
    os.close(r)
    with pytest.raises(OSError):
        pipes.drain(r)
