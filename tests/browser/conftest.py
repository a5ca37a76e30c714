"""Fixtures for the browser tests: an isolated ``jupyter lab`` server with the
relaykernel kernelspec, and headless Chromium driven by Playwright.

Requirements (the tests skip with a reason when one is missing, or fail if
``RELAYKERNEL_REQUIRE_BROWSER=1``):

* the ``jupyterlab`` and ``playwright`` Python packages (``pip install -e '.[test]'``);
* a Chromium binary: ``$RELAYKERNEL_CHROMIUM``, else ``/usr/bin/chromium`` (Debian:
  ``apt-get install -y chromium``; see deploy/apt-packages.txt).  Playwright never
  downloads a browser here.

Everything the server and its kernels read or write lives in a temporary
directory: JUPYTER_PATH (holding only the relaykernel kernelspec installed with
``python -m relaykernel install --prefix``, and an ipykernel one, installed with
``python -m ipykernel install --prefix``, for the tests that also run on
ipykernel to compare), JUPYTER_DATA_DIR, JUPYTER_RUNTIME_DIR,
JUPYTER_CONFIG_DIR (with lab user settings that switch off news/update checks),
IPYTHONDIR and the server's root_dir.  Every wait is bounded.  Teardown shuts the
server's kernels down over the REST API, then stops the server, then SIGKILLs by
pid any process of the server's tree that was seen during the run and survived.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"

KERNEL_NAME = "relaykernel"
#: the stock ipykernel (the one in this venv), for the tests whose behaviour it shares
IPYKERNEL_NAME = "ipykernel"
IPYKERNEL_DISPLAY_NAME = "Python 3 (ipykernel)"
SERVER_START_TIMEOUT = 90.0

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No crashpad handler process (it daemonizes, so it would outlive the browser).
    "--disable-crash-reporter",
    "--disable-breakpad",
]

# Lab user settings: no network checks, no pop-ups over the notebook.
LAB_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
}


def _missing(reason: str) -> None:
    if os.environ.get("RELAYKERNEL_REQUIRE_BROWSER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    candidates = [os.environ.get("RELAYKERNEL_CHROMIUM"), "/usr/bin/chromium",
                  shutil.which("chromium"), shutil.which("chromium-browser")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    _missing("no Chromium binary (set RELAYKERNEL_CHROMIUM or `apt-get install -y chromium`)")
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    proc: subprocess.Popen
    base_url: str
    token: str
    root_dir: Path
    env: dict[str, str]
    log_path: Path
    #: every process of the server's tree seen so far (psutil remembers create_time,
    #: so killing these later is safe against pid reuse)
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def kernels(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/kernels")

    def record_tree(self) -> list[psutil.Process]:
        """Remember the server and all its descendants (kernels, workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_for_server(proc: subprocess.Popen, runtime_dir: Path, token: str,
                     log_path: Path) -> str:
    """Return the server's base URL once /api/status answers; bounded."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    base_url = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n"
                                 + log_path.read_text(errors="replace")[-4000:])
        if base_url is None:
            # The server writes jpserver-<pid>.json with its real port once it listens.
            info = runtime_dir / f"jpserver-{proc.pid}.json"
            if info.exists():
                try:
                    data = json.loads(info.read_text())
                    base_url = data["url"].rstrip("/")
                except (ValueError, KeyError):
                    pass
        if base_url is not None:
            req = urllib.request.Request(base_url + "/api/status",
                                         headers={"Authorization": f"token {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        json.loads(resp.read())
                        return base_url
            except (urllib.error.URLError, OSError, ValueError) as e:
                last_error = e
        time.sleep(0.2)
    raise AssertionError(f"jupyter lab did not answer /api/status within {SERVER_START_TIMEOUT}s "
                         f"(last error: {last_error!r}):\n"
                         + log_path.read_text(errors="replace")[-4000:])


def _stop_server(server: LabServer) -> None:
    server.record_tree()
    # 1. Kernels first, through the server, so they get a proper shutdown.
    if server.proc.poll() is None:
        try:
            for k in server.kernels():
                try:
                    server.api("DELETE", f"/api/kernels/{k['id']}", timeout=20)
                except (urllib.error.URLError, OSError) as e:
                    print(f"shutting down kernel {k['id']} failed: {e!r}", file=sys.stderr)
        except (urllib.error.URLError, OSError, ValueError) as e:
            print(f"listing kernels failed: {e!r}", file=sys.stderr)
        server.record_tree()
    # 2. The server itself: SIGTERM (jupyter_server asks for confirmation on SIGINT).
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    # 3. Anything of the tree we ever saw that outlived it: SIGKILL by pid.
    survivors = []
    for p in server.seen.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(p)
        except psutil.NoSuchProcess:
            pass
    if survivors:
        _gone, alive = psutil.wait_procs(survivors, timeout=5)
        for p in alive:
            print(f"killing surviving process {p.pid} ({p.name()})", file=sys.stderr)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Expose the call phase's report as ``item.rep_call`` (screenshots on failure)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def lab_server(artifacts_dir: Path) -> Iterator[LabServer]:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("jupyterlab is not installed (pip install -e '.[test]')")

    root = Path(tempfile.mkdtemp(prefix="relaykernel-browser-"))
    prefix = root / "prefix"
    dirs = {
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTER_CONFIG_DIR": root / "config",
        "IPYTHONDIR": root / "ipython",
    }
    notebooks = root / "notebooks"
    for d in [*dirs.values(), notebooks, prefix]:
        d.mkdir(parents=True)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in dirs.items()})
    # Replace (not extend) JUPYTER_PATH: the session conftest points it at a
    # test kernelspec that is also called 'relaykernel'.
    env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    env.pop("JUPYTER_PLATFORM_DIRS", None)
    env.pop("JUPYTER_PREFER_ENV_PATH", None)

    for rel, settings in LAB_USER_SETTINGS.items():
        path = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))

    # The kernelspecs, the way a user installs them.
    subprocess.run([sys.executable, "-m", "relaykernel", "install", "--prefix", str(prefix)],
                   env=env, check=True, timeout=60, capture_output=True)
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", IPYKERNEL_NAME, "--display-name", IPYKERNEL_DISPLAY_NAME],
                   env=env, check=True, timeout=60, capture_output=True)
    listed = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
                            env=env, check=True, timeout=60, capture_output=True, text=True)
    specs = json.loads(listed.stdout)["kernelspecs"]
    for name in (KERNEL_NAME, IPYKERNEL_NAME):
        assert name in specs, f"jupyter kernelspec list does not show {name}: {specs}"
        resource_dir = Path(specs[name]["resource_dir"]).resolve()
        assert resource_dir.is_relative_to(prefix.resolve()), (
            f"{name} kernelspec resolved to {resource_dir}, not the one in {prefix}")

    token = secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "lab"] if jupyter.exists() else [sys.executable, "-m", "jupyterlab"]
    cmd += [
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={_free_port()}",
        "--ServerApp.port_retries=20",  # the real port is read back from jpserver-<pid>.json
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers
    log_path = artifacts_dir / "jupyter-lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=notebooks, start_new_session=True)
    server = None
    try:
        base_url = _wait_for_server(proc, dirs["JUPYTER_RUNTIME_DIR"], token, log_path)
        server = LabServer(proc=proc, base_url=base_url, token=token, root_dir=notebooks,
                           env=env, log_path=log_path)
        server.record_tree()
        yield server
    finally:
        if server is None:
            server = LabServer(proc=proc, base_url="http://127.0.0.1:0", token=token,
                               root_dir=notebooks, env=env, log_path=log_path)
        _stop_server(server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_context(lab_server: LabServer) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    user_data_dir = tempfile.mkdtemp(prefix="relaykernel-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
            timeout=60_000,
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(user_data_dir, ignore_errors=True)
