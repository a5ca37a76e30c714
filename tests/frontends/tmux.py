"""Driving a terminal program in tmux: send keys, read the screen, wait (bounded).

Each :class:`TmuxSession` runs its own tmux server on a private socket
(``tmux -L <name>``), started with the environment the test gives it, so the
program inside inherits exactly that environment.  ``close()`` kills that
server only (by its socket) and the processes it started, by pid.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence

import psutil
import pytest

from tests.kernel.helpers import reap

TMUX = shutil.which("tmux")

#: Skip tests that need tmux where it is missing (deploy/apt-packages.txt lists it).
requires_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed "
                                   "(apt-get install -y tmux; see deploy/apt-packages.txt)")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class TmuxSession:
    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str | None = None,
                 width: int = 160, height: int = 50) -> None:
        assert TMUX is not None
        self.socket = f"relaykernel-test-{uuid.uuid4().hex[:12]}"
        self.target = "main"
        command = " ".join(shlex.quote(a) for a in argv)
        # remain-on-exit keeps the pane (and its last screen) after the program ends
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", self.target,
                   "-x", str(width), "-y", str(height), command, env=env, cwd=cwd)
        self._tmux("set-option", "-t", self.target, "remain-on-exit", "on")
        self.server_pid = int(self._tmux("display-message", "-p", "-t", self.target, "#{pid}"))
        self.pane_pid = int(self._tmux("display-message", "-p", "-t", self.target, "#{pane_pid}"))
        self._procs: dict[int, psutil.Process] = {}
        self.remember_processes()

    def _tmux(self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None,
              check: bool = True) -> str:
        proc = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=15, env=env, cwd=cwd, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def remember_processes(self) -> None:
        """Record the server's process tree now (to clean it up by pid later)."""
        try:
            server = psutil.Process(self.server_pid)
            for p in [server, *server.children(recursive=True)]:
                self._procs.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def send(self, text: str, enter: bool = True) -> None:
        """Type ``text`` literally (then Enter)."""
        self.remember_processes()
        if text:
            self._tmux("send-keys", "-t", self.target, "-l", text)
        if enter:
            self._tmux("send-keys", "-t", self.target, "Enter")

    def key(self, *keys: str) -> None:
        """Send tmux key names, e.g. ``C-c``, ``Enter``."""
        self.remember_processes()
        self._tmux("send-keys", "-t", self.target, *keys)

    def screen(self, history: int = 2000) -> str:
        """The pane's text (with scrollback), wrapped lines joined, no escapes or trailing blanks."""
        out = self._tmux("capture-pane", "-p", "-J", "-S", f"-{history}", "-t", self.target,
                         check=False)
        # trailing blank lines (the empty rest of the pane) would shift offsets: drop them
        return "\n".join(line.rstrip() for line in _ANSI.sub("", out).splitlines()).rstrip()

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the screen text past offset ``after``."""
        end = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.screen()
            match = regex.search(text, after)
            if match:
                return match
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r} "
                                     f"on the screen:\n{text[-4000:]}")
            time.sleep(0.1)

    def mark(self) -> int:
        """The current length of the screen text: pass as ``after`` to wait for new output."""
        return len(self.screen())

    def pane_dead(self) -> bool:
        return self._tmux("display-message", "-p", "-t", self.target, "#{pane_dead}",
                          check=False) == "1"

    def close(self, wait: float = 10.0) -> list[int]:
        """Kill this session's tmux server and everything it started, by pid.

        A kernel whose jupyter console died with the pane is nobody's to shut down: it
        gets SIGTERM (its clean shutdown) rather than a wait of ``wait`` s for nothing."""
        self.remember_processes()
        self._tmux("kill-server", check=False)
        procs = [p for pid, p in self._procs.items() if pid != os.getpid()]
        _, alive = psutil.wait_procs(procs, timeout=1.0)
        for proc in alive:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        return reap(alive, wait)
