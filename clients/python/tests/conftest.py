"""Fixtures that run the real Perennial server.

``server``: one server for the whole session, started as
``perennial serve --host 127.0.0.1 --port <free> --data-dir <tmp>`` with the
bundled defaults.  ``start_server``: a factory for extra servers with a given
config text.

The binary is ``$PERENNIAL_BIN``, else ``<repo>/.build/debug/perennial``.
When it is missing the server tests are skipped, unless
``PERENNIAL_REQUIRE_SERVER`` is set, in which case they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import perennial  # noqa: E402

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def server_binary() -> Path:
    return Path(os.environ.get("PERENNIAL_BIN") or REPO / ".build" / "debug" / "perennial")


def _require_binary() -> Path:
    path = server_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        msg = ("server binary %s not found: build it with `swift build` or set PERENNIAL_BIN"
               % path)
        if os.environ.get("PERENNIAL_REQUIRE_SERVER"):
            pytest.fail(msg + " (PERENNIAL_REQUIRE_SERVER is set)", pytrace=False)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A running ``perennial serve`` and where it listens."""

    def __init__(self, proc: "subprocess.Popen[bytes]", host: str, port: int, data_dir: str,
                 log_path: str, args: Optional[List[str]] = None) -> None:
        self.args = args or []
        self.proc = proc
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self, **kw: object) -> perennial.Client:
        return perennial.Client(self.host, self.port, **kw)  # type: ignore[arg-type]

    def restart(self) -> None:
        """Stop (SIGTERM) and start the same server again: same port, data, config."""
        assert self.stop() == 0, self.log()
        self.start_again()

    def kill(self) -> None:
        """SIGKILL (a crash: no snapshot, nothing flushed), and wait for it."""
        self.proc.kill()
        self.proc.wait()

    def start_again(self, recovered: bool = True) -> None:
        """Start the same server (after `kill` or `stop`), and wait until it
        answers and, with `recovered`, has replayed its log."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _wait_until_up(self, recovered)

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit code (kills and fails on timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("server did not exit within %.0f s of SIGTERM\n%s"
                        % (STOP_TIMEOUT, self.log()), pytrace=False)
            raise  # unreachable


def start(config_text: Optional[str] = None, extra_args: Optional[List[str]] = None
          ) -> ServerProcess:
    binary = _require_binary()
    tmp = tempfile.mkdtemp(prefix="perennial-test-")
    data_dir = os.path.join(tmp, "data")
    host, port = "127.0.0.1", free_port()
    args = [str(binary), "serve", "--host", host, "--port", str(port), "--data-dir", data_dir]
    if config_text is not None:
        cfg = os.path.join(tmp, "perennial.toml")
        Path(cfg).write_text(config_text)
        args += ["--config", cfg]
    args += extra_args or []
    log_path = os.path.join(tmp, "server.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    srv = ServerProcess(proc, host, port, data_dir, log_path, args)
    _wait_until_up(srv)
    return srv


def _wait_until_up(srv: ServerProcess, recovered: bool = True) -> None:
    proc, host, port = srv.proc, srv.host, srv.port
    deadline = time.monotonic() + START_TIMEOUT
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("server exited with %s before answering a PING:\n%s"
                        % (proc.returncode, srv.log()), pytrace=False)
        try:
            with perennial.Client(host, port, timeout=2.0, hello=False) as c:
                if c.ping():
                    # (A server replaying its log answers before the
                    # replay ends: tests start from the whole model, as
                    # they did when the port opened only after it.)
                    if not recovered or c.stats().get("recovering", 0) == 0:
                        return
        except perennial.Unauthorized:
            return  # up, and asking for a token
        except perennial.PerennialError as e:
            last = e
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail("server did not answer a PING within %.0f s (%s):\n%s"
                % (START_TIMEOUT, last, srv.log()), pytrace=False)
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def server_process() -> Iterator[ServerProcess]:
    srv = start()
    yield srv
    code = srv.stop()
    shutil.rmtree(os.path.dirname(srv.data_dir), ignore_errors=True)
    assert code == 0, "server exited with %s after SIGTERM:\n%s" % (code, srv.log())


@pytest.fixture(scope="session")
def server(server_process: ServerProcess) -> Tuple[str, int]:
    """(host, port) of the session's server (bundled default config)."""
    return server_process.address


@pytest.fixture
def client(server: Tuple[str, int]) -> Iterator[perennial.Client]:
    c = perennial.Client(*server)
    yield c
    c.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(config_text)`` runs an extra server with ``--config FILE``.

    Every server it started is stopped with SIGTERM at the end of the test
    (unless it already exited) and must exit 0.
    """
    started: List[ServerProcess] = []

    def factory(config_text: str = "", extra_args: Optional[List[str]] = None) -> ServerProcess:
        srv = start(config_text, extra_args)
        started.append(srv)
        return srv

    yield factory
    failures = []
    for srv in started:
        code = srv.stop()
        if code != 0:
            failures.append("server on port %d exited with %s:\n%s" % (srv.port, code, srv.log()))
        shutil.rmtree(os.path.dirname(srv.data_dir), ignore_errors=True)
    assert not failures, "\n".join(failures)
