"""The supervisor's private directory: worker links (ipc), crash logs, progress files.

A 0700 directory from ``mkdtemp``, so only this user reaches the worker links.
The supervisor removes it when it exits; one that is SIGKILLed (``shutdown_kernel
(now=True)``, the OOM killer) cannot, and its crash logs would stay in /tmp.  So
every supervisor holds an flock on a file in its directory for as long as it
lives, and a few seconds after it starts removes the directories of others
whose lock nobody holds any more.  A lock dies with its process in whatever pid
namespace it ran, so a live kernel's directory is never taken for a dead one
(a pid check could not tell, across containers that share /tmp).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile

PREFIX = "relaykernel-"
LOCK_NAME = "alive.lock"

#: lock files of this process's directories: open (and locked) until it exits
_held: list[int] = []


def create() -> str:
    """Make and lock a new private directory; returns its path."""
    path = tempfile.mkdtemp(prefix=PREFIX)
    # locked before it has its name: a sweeper never sees the lock file unlocked
    fd, pending = tempfile.mkstemp(dir=path)
    os.set_inheritable(fd, False)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(pending, os.path.join(path, LOCK_NAME))
    _held.append(fd)
    return path


def remove_abandoned(own: str) -> list[str]:
    """Remove other supervisors' private directories whose lock is free: their
    supervisor is dead.  Directories without the lock file are left alone."""
    removed: list[str] = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(os.path.dirname(own)))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX) or entry.path == own:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            fd = os.open(os.path.join(entry.path, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not ours, or not a supervisor's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: its supervisor lives
            continue
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        finally:
            os.close(fd)
    return removed
