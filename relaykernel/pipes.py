"""Wake-up pipes: one process or thread writes a byte to say "look", and the
reader empties the pipe before it looks.  Used by the supervisor's loop (its
signal pipe), the fork server launcher (the server's answer) and the worker's
link (nudges).

Standard library only: both processes import it.
"""

from __future__ import annotations

import os


def drain(fd: int) -> None:
    """Read a non-blocking pipe's read end until it is empty (or its write end closed).

    What the bytes say does not matter, only that they came.  Any other OSError
    (a closed ``fd``) is raised: whether that can happen is the caller's to know.
    """
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
