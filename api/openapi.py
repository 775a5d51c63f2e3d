"""The committed ``openapi.json``: built from the app with a throwaway configuration, written sorted."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def build_schema() -> dict[str, Any]:
    from api.core.queue import RecordingQueue
    from api.core.settings import Settings
    from api.main import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp)), queue=RecordingQueue(), migrate=False)
        return app.openapi()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schema(out: Path) -> None:
    out.write_text(render(build_schema()))
