"""A real server for tests and benchmarks, started, awaited and stopped in one place.

`start_process` runs `speech7 serve` (or another command, e.g. scripts/serve) as a subprocess, the way an
operator runs it, configured by S7_* environment variables; `ThreadedServer` runs an app under uvicorn in a
thread of the caller's process (tests that look inside the app, e.g. to wrap an engine). Both return once
GET /healthz answers 200, and fail with the reason (and the server's log) when it never does.

Stdlib only (no httpx): production installs do not carry the test tools.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from starlette.types import ASGIApp

REPO = Path(__file__).resolve().parents[1]
SERVE = (sys.executable, "-m", "server.cli", "serve")
STOP_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    """The server exited, or did not answer /healthz in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(url: str, timeout_s: float, failed: Callable[[], str | None]) -> None:
    """Polls /healthz until it answers 200; `failed()` returns why the server cannot come up any more."""
    deadline = time.monotonic() + timeout_s
    while not is_healthy(url):
        reason = failed()
        if reason is not None:
            raise ServerStartError(reason)
        if time.monotonic() > deadline:
            raise ServerStartError(f"{url}/healthz did not answer within {timeout_s:g} s")
        time.sleep(0.1)  # readiness poll of a starting server


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path | None  # stdout and stderr of the server, when the caller asked for a file

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log is not None and self.log.is_file() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown runs (crash-recovery tests)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a graceful shutdown), SIGKILL if it has not ended after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_process(
    env: Mapping[str, str], *, command: Sequence[str] = SERVE, log: Path | None = None, timeout_s: float = 120.0,
) -> ServerProcess:
    """Starts the server on a free localhost port with os.environ plus `env`; returns once it is healthy."""
    port = free_port()
    full_env = {**os.environ, **env, "S7_HOST": "127.0.0.1", "S7_PORT": str(port)}
    out: IO[bytes] | None = log.open("wb") if log is not None else None
    try:
        proc = subprocess.Popen(list(command), cwd=REPO, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)

    def failed() -> str | None:
        if proc.poll() is None:
            return None
        return f"the server exited with {proc.returncode}\n{server.log_tail()}"

    try:
        wait_healthy(server.url, timeout_s, failed)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_process(
    env: Mapping[str, str], *, command: Sequence[str] = SERVE, log: Path | None = None, timeout_s: float = 120.0,
) -> Iterator[ServerProcess]:
    server = start_process(env, command=command, log=log, timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()


class ThreadedServer:
    """An ASGI app under uvicorn in a daemon thread (HTTP streaming and WebSockets behave as in production)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float = 60.0, options: Mapping[str, Any] | None = None) -> None:
        """`options`: more uvicorn.Config arguments (e.g. server.serving.uvicorn_options minus host and port)."""
        import uvicorn

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = self.url.replace("http://", "ws://", 1)
        config = uvicorn.Config(app, **{"log_level": "warning", "ws": "websockets", **(options or {}),
                                        "host": "127.0.0.1", "port": port})
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{port}", daemon=True)
        self._thread.start()
        try:
            wait_healthy(self.url, timeout_s, lambda: None if self._thread.is_alive() else "the server thread ended")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Runs the app's shutdown (lifespan) and joins the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, *, timeout_s: float = 60.0, options: Mapping[str, Any] | None = None
) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, timeout_s=timeout_s, options=options)
    try:
        yield server
    finally:
        server.stop()
