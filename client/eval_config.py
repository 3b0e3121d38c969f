"""``evalfleet eval --config FILE``: flag values from a YAML file, as lm-eval's ``--config``.

The YAML's keys are flag names without dashes (``model``, ``model_args``, ``tasks``, ...);
mappings may be given as YAML mappings and lists as YAML lists. Flags given on the command line
override the file (lm-eval's precedence: CLI > YAML > defaults).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from evalfleet.common.errors import InvalidArgumentError


def _config_path(argv: Sequence[str]) -> str | None:
    for i, token in enumerate(argv):
        if token in ("--config", "-C") and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def _as_flag_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return ",".join("None" if v is None else str(v) for v in value)
    return value


def _eval_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["eval"]
    raise RuntimeError("no eval subcommand")  # pragma: no cover


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Set the eval parser's defaults from ``--config``; returns ``argv`` unchanged."""
    path = _config_path(argv)
    if path is None:
        return argv
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"--config: {file} is not a file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"--config: {file} is not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise InvalidArgumentError(f"--config: {file} must hold a mapping of flag: value")
    eval_parser = _eval_parser(parser)
    known = {a.dest for a in eval_parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgumentError(f"--config: {file}: unknown key(s) {', '.join(unknown)}; keys "
                                   "are eval flag names without dashes")
    eval_parser.set_defaults(**{k: _as_flag_value(v) for k, v in values.items()})
    return argv
