"""HellaSwag doc preprocessing (WikiHow bracket artifacts removed, as lm-eval does)."""

from __future__ import annotations

import re
from typing import Any

_BRACKETED = re.compile(r"\[.*?\]")


def clean(text: str) -> str:
    """Strip, turn ' [title]' into '. ', drop other [tags], collapse one level of double spaces."""
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def _to_query_doc(doc: dict[str, Any]) -> dict[str, Any]:
    context = f"{doc['ctx_a']} {doc['ctx_b'].capitalize()}"
    return {
        "query": clean(f"{doc['activity_label']}: {context}"),
        "choices": [clean(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def process_docs(dataset: Any) -> Any:
    """Add query / choices / gold columns to every doc."""
    return dataset.map(_to_query_doc)
