"""Helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

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


def example_command(kind: str, port: int) -> list[str]:
    """How the README runs example ``kind`` (``fastapi`` under uvicorn, ``flask`` under
    gunicorn with its start-up config), from the project root, on 127.0.0.1:``port``."""
    if kind == "fastapi":
        app = ["--app-dir", "examples/fastapi_app", "main:app"]
        return [interpreter(), "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    config = ["-c", "examples/flask_app/gunicorn.conf.py", "--chdir", "examples/flask_app"]
    return [interpreter(), "-m", "gunicorn", *config, "-b", f"127.0.0.1:{port}", "main:app"]
