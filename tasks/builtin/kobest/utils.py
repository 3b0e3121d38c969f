"""KoBEST helpers: COPA, SentiNeg and WiC prompt fields, HellaSwag doc processing, macro-F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CONNECTORS = {"원인": " 왜냐하면", "결과": " 그래서"}  # cause -> "because", effect -> "so"


def copa_doc_to_text(doc: dict[str, Any]) -> str:
    """Premise, a space, then the connector (which itself starts with a space)."""
    return f"{doc['premise']} {_CONNECTORS[doc['question'].strip()]}"


def copa_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The two alternatives."""
    return [str(doc["alternative_1"]), str(doc["alternative_2"])]


def copa_doc_to_target(doc: dict[str, Any]) -> str:
    """The correct alternative's text (label 0 -> alternative_1)."""
    return copa_doc_to_choice(doc)[0 if doc["label"] == 0 else 1]


def sentineg_doc_to_text(doc: dict[str, Any]) -> str:
    """The sentence, then the question word ("positive or negative:")."""
    return f"문장: {doc['sentence']} 긍부정:"


def wic_doc_to_text(doc: dict[str, Any]) -> str:
    """Both sentences, then whether the word means the same in both."""
    return (f"문장1: {doc['context_1']} 문장2: {doc['context_2']} 두 문장에서 {doc['word']}가 "
            "같은 뜻으로 쓰였나?")


def _hellaswag_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "query": f"문장: {doc['context']}",
        "choices": [doc[f"ending_{i}"] for i in range(1, 5)],
        "gold": int(doc["label"]),
    }


def hellaswag_process_doc(dataset: Any) -> Any:
    """Add query / choices / gold columns."""
    return dataset.map(_hellaswag_fields)


def macro_f1_score(items: Sequence[tuple[Any, Any]]) -> float:
    """Macro-averaged F1 over (gold, pred) pairs."""
    from sklearn.metrics import f1_score

    golds = [g for g, _ in items]
    preds = [p for _, p in items]
    return f1_score(golds, preds, average="macro")
