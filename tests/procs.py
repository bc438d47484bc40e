"""Helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[1]


def interpreter() -> str:
    """The project's venv Python when there is one (subprocesses see the same packages)."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server started in its own session; kill its group if it will not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@contextlib.contextmanager
def serving(
    command: list[str], env: Mapping[str, str], health_url: str, log: Path, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` from the project root in its own session, logging to ``log``; yield
    it once ``health_url`` answers 200 (20 s at most), and stop it afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited early:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not healthy in 20 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)  # polling a starting process, not time logic
        yield process
    finally:
        stop(process)


def example_command(kind: str, port: int) -> list[str]:
    """How the README runs example ``kind`` (``fastapi`` under uvicorn, ``flask`` under
    gunicorn with its start-up config, ``django`` under gunicorn), from the project root, on
    127.0.0.1:``port``."""
    if kind == "fastapi":
        app = ["--app-dir", "examples/fastapi_app", "main:app"]
        return [interpreter(), "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    if kind == "django":
        app = ["--chdir", "examples/django_app", "shop.wsgi:application"]
        return [interpreter(), "-m", "gunicorn", *app, "-b", f"127.0.0.1:{port}"]
    config = ["-c", "examples/flask_app/gunicorn.conf.py", "--chdir", "examples/flask_app"]
    return [interpreter(), "-m", "gunicorn", *config, "-b", f"127.0.0.1:{port}", "main:app"]


class RedisServer:
    """A real redis-server on a free loopback port, nothing saved to disk; ``stop()`` and
    ``start()`` again on the same port (a Redis restart)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start (make test installs it when missing)")
            time.sleep(0.05)  # polling a starting process

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
