"""Starting and steering the stand-ins' provider batch APIs in tests (see
tests/servers/batch_standin.py for the controls)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from conftest import ServerProcess, openai_test_server


def openai_standin(model_dir: Path, *extra: str, record: Path | None = None) -> ServerProcess:
    """tests/servers/openai_compat.py serving ``model_dir`` as model "smol" (batches included);
    ``record``: where it writes each online request body (``srv.record``)."""
    args = [*extra, *(("--record", str(record)) if record else ())]
    srv = openai_test_server(model_dir, *args)
    srv.record = record
    return srv


def control(srv: ServerProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (no ``body``) or POST ``path`` (e.g. "/control/batches/release") on a stand-in."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{srv.port}{path}", method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def batch_submissions(srv: ServerProcess) -> int:
    """How many batches the stand-in has created."""
    return control(srv, "/control/stats")["batch_submissions"]
