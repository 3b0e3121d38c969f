"""Which extras of evalfleet a parsed command needs, checked before the command starts: a command
of the base install (``eval --coordinator``, ``results``, ``workers``, ``gate``) needs none, and
one that needs a missing extra stops with one line naming it (``common/extras.py``)."""

from __future__ import annotations

import argparse

from evalfleet.common.extras import require_extras

#: The extra that holds each backend's libraries (by canonical backend name); every other
#: backend is an API backend.
BACKEND_EXTRAS = {"hf": "hf", "vllm": "vllm"}
#: ``eval --tasks`` values that list the task engine's tasks instead of evaluating.
LISTING_TASKS = ("list", "list_groups", "list_tags", "list_subtasks")


def backend_extra(backend: str) -> str | None:
    """The extra of ``backend`` (a name or alias); None for a name no backend has (the command
    then reports the unknown name itself)."""
    from evalfleet.inference.backends import UnknownBackendError, canonical_backend_name

    try:
        return BACKEND_EXTRAS.get(canonical_backend_name(backend), "api")
    except UnknownBackendError:
        return None


def _with_backend(extras: list[str], backend: str) -> list[str]:
    extra = backend_extra(backend)
    return extras + ([extra] if extra else [])


def needed_extras(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(what, extras) for each part of the command ``args`` that needs extras."""
    command = args.command
    if command == "serve" and args.service == "worker":
        return [(f"serve worker --backend {args.backend}", _with_backend([], args.backend))]
    if command == "serve":
        return [("serve coordinator", ["coordinator"])]
    if command in ("tasks", "warmup"):
        return [(f"{command} {getattr(args, 'action', '')}".strip(), ["coordinator"])]
    if command == "eval":
        return _eval_extras(args)
    if command == "results" and args.action == "plot":
        return [("results plot", ["plot"])]
    if command == "results" and args.action == "fetch" and args.store \
            and args.store.split(":", 1)[0].lower() in ("postgresql", "postgres"):
        return [("results --store postgresql://...", ["coordinator"])]
    if command == "gate" and args.mlflow_args:
        return [("gate --mlflow_args", ["mlflow"])]
    return []


def _eval_extras(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    if args.tasks in LISTING_TASKS:
        return [(f"eval --tasks {args.tasks}", ["coordinator"])]
    needs: list[tuple[str, list[str]]] = []
    if not args.coordinator:
        needs.append((f"eval --model {args.model} without --coordinator (an embedded "
                      "coordinator and worker)", _with_backend(["coordinator"], args.model)))
    elif args.write_out:
        needs.append(("eval --write_out (renders the prompts here)", ["coordinator"]))
    if args.wandb_args:
        needs.append(("eval --wandb_args", ["wandb"]))
    if args.mlflow_args:
        needs.append(("eval --mlflow_args", ["mlflow"]))
    return needs


def check_extras(args: argparse.Namespace) -> None:
    """Raise ``MissingExtraError`` (one line) when the command needs an extra not installed."""
    for what, extras in needed_extras(args):
        require_extras(what, *extras)
