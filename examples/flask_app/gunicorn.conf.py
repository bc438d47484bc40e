"""gunicorn settings for the Flask example: fetch the signing keys in each worker at start-up.

Run: .venv/bin/python -m gunicorn -c examples/flask_app/gunicorn.conf.py \\
         --chdir examples/flask_app -b 127.0.0.1:8000 main:app
(WSGI has no start-up hook of its own; without ``-c`` the first request fetches the keys.)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bearerguard import WarmUpError


def post_worker_init(worker: Any) -> None:
    """An issuer that is briefly down only costs a warning: requests then fetch keys
    themselves (503 until it answers)."""
    server = worker.wsgi.extensions["bearerguard"]
    try:
        server.warm_up()
    except WarmUpError as exc:
        logging.getLogger("shopping").warning("starting without signing keys: %s", exc)


def on_starting(server: Any) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, /metrics adds up every worker's counts; the
    directory must start empty, or counts of an earlier run would be added in."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
