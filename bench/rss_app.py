"""The apps bench/rss.py measures, each with a SIGUSR1 hook that writes a tracemalloc snapshot.

RSS_VARIANT=example: the FastAPI shopping example as it is; bare: the same routes, no
bearerguard at all. Tracing starts once the app is built (imports traced would take minutes):
``python -m uvicorn --app-dir bench rss_app:app``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(os.environ.get("RSS_SNAPSHOTS", "."))
_count = 0


def _dump(signum: int, frame: Any) -> None:
    global _count
    _count += 1
    tracemalloc.take_snapshot().dump(str(SNAPSHOTS / f"snapshot-{_count}.bin"))


signal.signal(signal.SIGUSR1, _dump)

if os.environ.get("RSS_VARIANT", "example") == "bare":
    from fastapi import FastAPI

    app: Any = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/products")
    def products() -> list[dict[str, Any]]:
        return [{"id": 1, "name": "Espresso beans", "price": 14.5}]

else:
    if os.environ.get("RSS_VARIANT") == "no-metrics":
        sys.modules["bearerguard.prometheus"] = None  # type: ignore[assignment]  # as if absent
    sys.path.insert(0, str(ROOT / "examples" / "fastapi_app"))
    spec = importlib.util.spec_from_file_location(
        "shop_example", ROOT / "examples" / "fastapi_app" / "main.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shop_example"] = module
    spec.loader.exec_module(module)
    app = module.app

tracemalloc.start(8)
