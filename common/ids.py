"""Content-derived ids: equal requests get equal ids, so answers can be cached and resumed."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def request_id(request_type: str, arguments: tuple[Any, ...] | list[Any]) -> str:
    """sha256 over the request type and its arguments (canonical JSON)."""
    payload = json.dumps([request_type, list(arguments)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
