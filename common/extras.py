"""The optional parts ("extras") of the evalfleet distribution, and the one-line error of a command
that needs one that is not installed.

The base install is the client (``eval --coordinator``, ``results``, ``workers``, ``gate``);
``evalfleet[coordinator]``, ``evalfleet[hf]``, ``evalfleet[api]``, ``evalfleet[vllm]`` and the
others carry the rest. What an extra requires is read from the installed distribution's own
metadata (pyproject.toml's ``[project.optional-dependencies]``), so this module names no package
twice; without that metadata (a source tree on ``PYTHONPATH``) nothing is reported missing and the
imports themselves decide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import metadata

from evalfleet.common.errors import FailedPreconditionError

DISTRIBUTION = "evalfleet"
#: A requirement's name and its extras: ``psycopg[binary]>=3.2`` -> ("psycopg", "binary").
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(FailedPreconditionError):
    """A command needs an extra of evalfleet that is not installed; the message names the
    command, the extra and the pip command that installs it."""


@cache
def extra_requirements() -> dict[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """Each extra's requirements as (distribution name, its extras); empty when evalfleet's
    metadata cannot be read."""
    try:
        lines = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for line in lines:
        requirement, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        named = _REQUIREMENT.match(requirement)
        if found is None or named is None:
            continue
        extras = tuple(e.strip() for e in (named.group(2) or "").split(",") if e.strip())
        out.setdefault(found.group(1), []).append((named.group(1), extras))
    return {extra: tuple(reqs) for extra, reqs in out.items()}


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_packages(extra: str, _seen: frozenset[str] = frozenset()) -> list[str]:
    """The distributions that ``extra`` requires (through the extras it names of evalfleet
    itself) and that are not installed, in their order; [] for an extra the metadata does not
    know."""
    missing: list[str] = []
    for name, extras in extra_requirements().get(extra, ()):
        if name.lower() == DISTRIBUTION:
            for inner in extras:
                if inner not in _seen:
                    missing += missing_packages(inner, _seen | {extra})
        elif not _installed(name):
            missing.append(name)
    return list(dict.fromkeys(missing))


def install_command(extras: Iterable[str]) -> str:
    """``pip install 'evalfleet[a,b]'``."""
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def require_extras(what: str, *extras: str) -> None:
    """Raise :class:`MissingExtraError` when one of ``extras`` is not (fully) installed, naming
    ``what`` (the command, e.g. ``serve worker --backend hf``), the extras that are missing, the
    packages they lack and the pip command."""
    lacking = {extra: missing_packages(extra) for extra in extras}
    lacking = {extra: names for extra, names in lacking.items() if names}
    if not lacking:
        return
    names = list(dict.fromkeys(n for ns in lacking.values() for n in ns))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    which = (f"the {next(iter(lacking))} extra" if len(lacking) == 1
             else f"the {' and '.join(lacking)} extras")
    raise MissingExtraError(f"{what} needs {which} ({shown} not installed): "
                            f"{install_command(lacking)}")
