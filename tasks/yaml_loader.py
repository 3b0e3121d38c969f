"""Read task YAML files: ``!function`` tags (resolved lazily) and ``include:`` merging."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from evalfleet.tasks.errors import TaskError, config_error

_Base = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
_MODULES: dict[Path, tuple[int, ModuleType]] = {}


@dataclass(frozen=True)
class FunctionRef:
    """An unresolved ``!function module.fn`` reference and the directory of its YAML file."""

    spec: str
    base_dir: Path
    source: Path

    def resolve(self, key: str = "") -> Callable:
        """Import the function: `<module>.py` next to the YAML first, else an importable one."""
        mod_path, _, fn_name = self.spec.rpartition(".")
        if not mod_path:
            raise config_error(self.source, key, f"!function {self.spec!r} has no module part")
        local = (self.base_dir / f"{mod_path.replace('.', '/')}.py").resolve()
        try:
            module = (
                _load_file_module(local) if local.exists() else importlib.import_module(mod_path)
            )
        except ImportError as err:
            raise config_error(
                self.source, key, f"!function {self.spec!r}: cannot import module ({err})"
            ) from None
        except (Exception, SystemExit) as err:  # noqa: BLE001 - module code may raise anything
            raise config_error(
                self.source, key, f"!function {self.spec!r}: module failed to load: {err!r}"
            ) from None
        fn = getattr(module, fn_name, None)
        if fn is None:
            raise config_error(
                self.source, key, f"!function {self.spec!r}: module has no attribute {fn_name!r}"
            )
        return fn


def _load_file_module(path: Path) -> ModuleType:
    mtime = path.stat().st_mtime_ns
    cached = _MODULES.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"evalfleet_task_module_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _MODULES[path] = (mtime, module)
    return module


def _make_loader(path: Path) -> type:
    class Loader(_Base):  # type: ignore[misc,valid-type]
        pass

    def ctor(loader: Any, node: yaml.Node) -> FunctionRef:
        return FunctionRef(loader.construct_scalar(node), path.parent, path)

    Loader.add_constructor("!function", ctor)
    return Loader


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file (no include handling); raise TaskError on syntax errors."""
    try:
        with path.open("rb") as fh:
            cfg = yaml.load(fh, Loader=_make_loader(path))  # noqa: S506 - custom safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise config_error(path, None, f"invalid YAML{where}: {problem}") from None
    except OSError as err:
        raise config_error(path, None, f"cannot read file: {err.strerror}") from None
    if not isinstance(cfg, dict):
        raise config_error(path, None, f"expected a mapping at top level, got {type(cfg).__name__}")
    return cfg


def load_config(path: str | Path, roots: Sequence[Path] | None = None,
                _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """Load a task/group YAML, merging ``include:`` files first (local keys win).

    ``roots``: the task folders in use; an ``include:`` must name a file inside one of them
    (a task file cannot make the coordinator read any other file)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise config_error(path, "include", "include cycle")
    cfg = read_yaml(path)
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise config_error(path, "include", f"expected a file name, got {inc!r}")
        inc_path = (Path(inc) if Path(inc).is_absolute() else path.parent / inc).resolve()
        if roots is not None and not any(inc_path.is_relative_to(r) for r in roots):
            raise config_error(path, "include", f"included file {str(inc_path)!r} is outside "
                               f"the task folders in use ({', '.join(map(str, roots))}); put "
                               "it in an --include_path folder")
        if not inc_path.exists():
            raise config_error(path, "include", f"included file {str(inc_path)!r} does not exist")
        inc_cfg = load_config(inc_path, roots, _seen | {path})
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


def resolve_functions(value: Any, key: str = "") -> Any:
    """Recursively replace FunctionRef objects with the functions they name."""
    if isinstance(value, FunctionRef):
        return value.resolve(key)
    if isinstance(value, dict):
        return {k: resolve_functions(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_functions(v, key) for v in value]
    return value


def describe(value: Any) -> Any:
    """Printable form of a config value: callables and refs become source text / names."""
    if isinstance(value, FunctionRef):
        return f"!function {value.spec}"
    if callable(value):
        try:
            return inspect.getsource(value)
        except (TypeError, OSError):
            return str(value)
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [describe(v) for v in value]
    if isinstance(value, Enum):  # e.g. OutputType: its string, as the task file gave it
        return value.value
    return value


__all__ = ["FunctionRef", "TaskError", "describe", "load_config", "read_yaml", "resolve_functions"]
