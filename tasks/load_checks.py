"""Why a task's own Python code would keep it from loading, found without running the code.

A task's ``!function`` references (and a ``class:`` task's class) import modules when the task
is loaded. This module reads those modules with ``ast`` (once per file) and lists what they
need at import time: other modules (``import x``, ``from x import y``, a ``find_spec`` probe),
installed distributions (``importlib.metadata.version``), programs (a ``shutil.which`` probe)
and Hugging Face ``evaluate`` metrics loaded at import.
The needs are facts of the files (the library index stores them); whether they are met is a
fact of the environment, checked when asked (``first_problem``), so installing a package makes
its tasks load without rebuilding the index. The reasons read as naming the task reports them.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from evalfleet.tasks.yaml_loader import FunctionRef

#: How long a check of the environment (a module found, a program on PATH) is remembered.
RECHECK_S = 60.0
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
_CATCH_ALL = frozenset({"Exception", "BaseException"})
_OTHER_ERRORS = frozenset({"FileNotFoundError", "OSError", "ConnectionError", "RuntimeError"})


@dataclass(frozen=True)
class Need:
    """One thing code needs when it runs: ``kind`` 'module' (a dotted module name), 'name'
    (``target`` is "module:attribute", imported from a module outside the task library),
    'distribution' (installed), 'program' (on PATH) or 'evaluate' (an HF evaluate metric);
    ``raises`` is the exception the code raises instead when it is missing ("Class: message"),
    where the code says."""

    kind: str
    target: str
    raises: str | None = None

    def to_json(self) -> list[str | None]:
        """The stored form."""
        return [self.kind, self.target, self.raises]

    @classmethod
    def from_json(cls, value: list[str | None]) -> Need:
        """From the stored form."""
        return cls(str(value[0]), str(value[1]), value[2])


@dataclass(frozen=True)
class Ref:
    """A ``!function`` (or ``class:``) reference of a task, in the order loading resolves it:
    the config key, the reference, the file it is written in and the module file it names
    (None: a module imported by name, ``module``)."""

    key: str
    spec: str
    source: str
    module_file: str | None
    module: str | None = None

    def to_json(self) -> list[str | None]:
        """The stored form."""
        return [self.key, self.spec, self.source, self.module_file, self.module]

    @classmethod
    def from_json(cls, value: list[str | None]) -> Ref:
        """From the stored form."""
        return cls(*(value + [None] * (5 - len(value))))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the references of a task
def task_refs(cfg: dict[str, Any], path: Path | None) -> list[Ref]:
    """The ``!function`` references of the task read from ``path`` in the order its loading
    resolves them; a ``class:`` reference, whose instance is built last, is named by the
    task's file as its loading names it."""
    from evalfleet.tasks.config import STRUCTURAL_KEYS

    raw = {k: v for k, v in cfg.items() if k not in STRUCTURAL_KEYS}
    refs = [_ref(key, fn) for key, fn in _walk(raw, "")]
    return [r for r in refs if r.key != "class"] + [
        Ref(r.key, r.spec, str(path), r.module_file, r.module) for r in refs if r.key == "class"]


def _walk(value: Any, key: str) -> Iterator[tuple[str, FunctionRef]]:
    if isinstance(value, FunctionRef):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def _ref(key: str, fn: FunctionRef) -> Ref:
    module, _, _ = fn.spec.rpartition(".")
    local = (fn.base_dir / f"{module.replace('.', '/')}.py").resolve()
    if local.exists():
        return Ref(key, fn.spec, str(fn.source), str(local))
    return Ref(key, fn.spec, str(fn.source), None, module or None)


def ref_needs(ref: Ref) -> list[Need]:
    """What resolving ``ref`` needs: its module's import-time needs (a module imported by
    name: being importable, and what lm-eval's own modules need), and for a ``class:`` the
    needs of building the class (its ``__init__`` and ``download``, and the module's functions
    they call)."""
    if ref.module_file is None:  # imported by name: lm-eval's own modules are read too
        need = Need("module", ref.module or "")
        return [need, *(n for file in _library_files(need)
                        for n in module_needs(file, _package_of(file)))] if ref.module else []
    needs = list(module_needs(ref.module_file))
    if ref.key == "class":
        needs += class_needs(ref.module_file, ref.spec.rpartition(".")[2])
    return needs


# ---------------------------------------------------------------- reading a module's code
@lru_cache(maxsize=4096)
def _parsed(path: str, stamp: int) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None


def _tree(path: str) -> ast.Module | None:
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _parsed(path, stamp)


def _library_package() -> Path | None:
    """The folder of the package holding lm-eval's task library (its modules are read too)."""
    from evalfleet.tasks.index import lmeval_task_library

    library = lmeval_task_library()
    return library.parent if library is not None else None


def _name_of_exception(node: ast.expr | None) -> set[str]:
    if node is None:
        return {"BaseException"}
    if isinstance(node, ast.Tuple):
        return set().union(*(_name_of_exception(e) for e in node.elts))
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return {node.id} if isinstance(node, ast.Name) else set()


def _literal(node: ast.expr | None) -> str | None:
    """A string the code spells out (implicit concatenation included), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        return left + right if left is not None and right is not None else None
    return None


def _raised(body: list[ast.stmt]) -> str | bool:
    """What a block raises first: "Class: message" for ``raise Class("literal")`` or
    ``sys.exit("literal")``, "Class" when the message is not spelled out, "?" for another
    raise; False when it raises nothing."""
    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Raise):
                exc = sub.exc
                if isinstance(exc, ast.Call) and isinstance(exc.func, ast.Call) \
                        and _dotted(exc.func.func) == "type":
                    text = _literal(exc.args[0]) if len(exc.args) == 1 else None
                    return "*" if text is None else f"*: {text}"  # the caught error's class
                if isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name | ast.Attribute):
                    name = exc.func.id if isinstance(exc.func, ast.Name) else exc.func.attr
                    text = _literal(exc.args[0]) if len(exc.args) == 1 else None
                    return name if text is None else f"{name}: {text}"
                return "?"
            if isinstance(sub, ast.Call) and _dotted(sub.func) in ("sys.exit", "exit"):
                text = _literal(sub.args[0]) if len(sub.args) == 1 else None
                return "SystemExit" if text is None else f"SystemExit: {text}"
    return False


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _resolve_relative(node: ast.ImportFrom, package: str | None) -> str | None:
    if not node.level:
        return node.module
    if not package:
        return None  # a relative import in a module loaded from its file: always fails
    parts = package.split(".")
    if node.level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


#: What a surrounding ``try`` does with an error: per kind of need ("import": ImportError,
#: "other": what evaluate raises), what its handler raises instead, or False: swallowed.
Handling = dict[str, str | bool]


class _Reader:
    """Collects the needs of statements run in order (a module's body or a function's)."""

    def __init__(self, package: str | None) -> None:
        self.package = package
        self.needs: list[Need] = []
        self.evaluate_loads: set[str] = {"evaluate.load"}
        self.version_calls: set[str] = {"importlib.metadata.version", "metadata.version"}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self._entered: set[int] = set()

    def enter(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, handling: Handling) -> None:
        """Read a function's body where it is called (once)."""
        if id(fn) not in self._entered:
            self._entered.add(id(fn))
            self.block(fn.body, handling, [])

    def block(self, body: list[ast.stmt], handling: Handling | None = None,
              calls: list[str] | None = None) -> None:
        """Read ``body``; ``calls`` collects the names of the functions it calls."""
        for node in body:
            self.statement(node, handling or {}, calls)

    def statement(self, node: ast.stmt, handling: Handling, calls: list[str] | None) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.add(Need("module", alias.name), handling)
                if alias.name == "evaluate":
                    self.evaluate_loads.add(f"{alias.asname or alias.name}.load")
        elif isinstance(node, ast.ImportFrom):
            self.import_from(node, handling)
        elif isinstance(node, ast.Try):
            inner = dict(handling)
            for kind, caught in (("import", _IMPORT_ERRORS), ("other", _OTHER_ERRORS)):
                for handler in node.handlers:
                    if _name_of_exception(handler.type) & (caught | _CATCH_ALL):
                        inner[kind] = _raised(handler.body)
                        break
            self.block(node.body, inner, calls)
            self.block(node.orelse + node.finalbody, handling, calls)
        elif isinstance(node, ast.With):
            self.block(node.body, handling, calls)
        elif isinstance(node, ast.If):
            self.probe(node, handling)
        elif isinstance(node, ast.Expr | ast.Assign | ast.AnnAssign | ast.Return | ast.Assert):
            self.calls(node, handling, calls)

    def import_from(self, node: ast.ImportFrom, handling: Handling) -> None:
        module = _resolve_relative(node, self.package)
        if module is None:
            self.add(Need("module", "." * node.level + (node.module or ""),
                          "ImportError: attempted relative import with no known parent "
                          "package"), handling)
            return
        self.add(Need("module", module), handling)
        for alias in node.names:
            if alias.name != "*":
                self.add(Need("name", f"{module}:{alias.name}"), handling)
            if module == "evaluate" and alias.name == "load":
                self.evaluate_loads.add(alias.asname or alias.name)
            if module in ("importlib.metadata", "importlib_metadata") \
                    and alias.name == "version":
                self.version_calls.add(alias.asname or alias.name)

    def probe(self, node: ast.If, handling: Handling) -> None:
        """``if shutil.which("x") is None: sys.exit(...)`` and ``if find_spec("x") is None:
        raise ...``; other conditions are not followed (either branch may run)."""
        test = node.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Is) and isinstance(test.left, ast.Call)
                and isinstance(test.comparators[0], ast.Constant)
                and test.comparators[0].value is None and len(test.left.args) == 1):
            return
        func, arg = _dotted(test.left.func), _literal(test.left.args[0])
        said = _raised(node.body)
        if arg is None or said is False:
            return
        raises = None if said == "?" else str(said)
        if func.endswith("which"):
            self.add(Need("program", arg, raises), {**handling, "import": True})
        elif func.endswith("find_spec"):
            self.add(Need("module", arg, raises), {**handling, "import": True})

    def calls(self, node: ast.stmt, handling: Handling, calls: list[str] | None) -> None:
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Call):
                continue
            func = _dotted(sub.func)
            name = _literal(sub.args[0]) if sub.args else None
            if func in self.evaluate_loads and name:
                self.add(Need("evaluate", name), handling)
            elif func in self.version_calls and name:
                self.add(Need("distribution", name), handling)
            elif calls is not None and func in self.functions:
                self.enter(self.functions[func], handling)

    def add(self, need: Need, handling: Handling) -> None:
        """Keep ``need`` with what is raised when it is unmet (a probe's own raise stands)."""
        said = handling.get("other" if need.kind == "evaluate" else "import")
        if said is False:
            return
        if isinstance(said, str) and said != "?":
            need = Need(need.kind, need.target, said)
        self.needs.append(need)


def _package_of(path: str) -> str | None:
    """The dotted package of a module file inside lm-eval's package (None outside it: a task
    module is loaded from its file, with no package)."""
    root = _library_package()
    file = Path(path)
    if root is None or not file.is_relative_to(root):
        return None
    parts = list(file.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1])


@lru_cache(maxsize=8192)
def _own_needs(path: str, package: str | None, stamp: int) -> tuple[Need, ...]:
    tree = _tree(path)
    if tree is None:
        return ()
    reader = _Reader(package)
    reader.functions = {n.name: n for n in tree.body
                        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    reader.block(tree.body, None, [])
    return tuple(reader.needs)


def _stamp(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def module_needs(path: str, package: str | None = None) -> tuple[Need, ...]:
    """What importing the module file ``path`` needs, in the order it needs it (each once);
    the modules of lm-eval's own package that it imports are read too."""
    stamp = _stamp(path)
    return () if stamp is None else _module_needs(path, package, stamp)


@lru_cache(maxsize=4096)
def _module_needs(path: str, package: str | None, stamp: int) -> tuple[Need, ...]:
    out: dict[Need, None] = {}
    seen = {path}

    def visit(file: str, pkg: str | None) -> None:
        stamp = _stamp(file)
        for need in () if stamp is None else _own_needs(file, pkg, stamp):
            out.setdefault(need, None)
            if need.raises is not None or need.kind not in ("module", "name"):
                continue
            for inner in _library_files(need):
                if inner not in seen:
                    seen.add(inner)
                    visit(inner, _package_of(inner))

    visit(path, package)
    return tuple(out)


def _library_files(need: Need) -> list[str]:
    """The files of lm-eval's own package that importing ``need``'s module runs (its
    packages' ``__init__`` files and itself; for a name, the submodule of that name)."""
    root = _library_package()
    module = need.target.replace(":", ".")
    if root is None or module.split(".")[0] != root.name:
        return []
    out: list[str] = []
    parts = module.split(".")
    for n in range(1, len(parts) + 1):
        base = root.parent.joinpath(*parts[:n])
        for file in (base / "__init__.py", base.with_suffix(".py")):
            if file.is_file():
                out.append(str(file))
                break
    return out


def class_needs(path: str, name: str) -> list[Need]:
    """What building class ``name`` of module ``path`` needs beyond importing it: imports and
    probes in its ``__init__`` and ``download`` and, where they are called, in the module's
    functions they call (in the order they run)."""
    tree = _tree(path)
    cls = None if tree is None else next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if tree is None or cls is None:
        return []
    functions = {n.name: n for n in tree.body
                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods: dict[str, ast.FunctionDef] = {}
    chain, todo = [], [cls]
    while todo:  # the class, then its bases defined in the same module
        klass = todo.pop(0)
        if klass not in chain:
            chain.append(klass)
            todo += [classes[b.id] for b in klass.bases
                     if isinstance(b, ast.Name) and b.id in classes]
    for klass in reversed(chain):
        methods |= {n.name: n for n in klass.body if isinstance(n, ast.FunctionDef)}
    reader = _Reader(None)
    reader.functions = {**functions, **{f"self.{k}": v for k, v in methods.items()}}
    for method in ("__init__", "download"):
        if method in methods:
            reader.enter(methods[method], {})
    return reader.needs


def class_dataset(path: str, name: str) -> tuple[str | None, str | None]:
    """The ``DATASET_PATH`` and ``DATASET_NAME`` class ``name`` of module ``path`` spells out
    (its own or a base's in the same module), as (None, None) where it does not."""
    tree = _tree(path)
    classes = {} if tree is None else {n.name: n for n in tree.body
                                       if isinstance(n, ast.ClassDef)}
    found: dict[str, str | None] = {}
    todo = [classes[name]] if name in classes else []
    while todo:
        klass = todo.pop(0)
        for node in klass.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name) \
                    and node.targets[0].id in ("DATASET_PATH", "DATASET_NAME") \
                    and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str | None):
                found.setdefault(node.targets[0].id, node.value.value)
        todo += [classes[b.id] for b in klass.bases if isinstance(b, ast.Name)
                 and b.id in classes]
    return found.get("DATASET_PATH"), found.get("DATASET_NAME")


# ---------------------------------------------------------------- checking the environment
_FORGOTTEN = 0  # bumped by recheck()


def _bucket() -> int:
    return int(time.monotonic() // RECHECK_S) * 1000 + _FORGOTTEN


def generation() -> int:
    """How many times ``recheck`` was called (modulo 1000): memos keyed on it go stale."""
    return _FORGOTTEN


def recheck() -> None:
    """Check the environment afresh on the next question (as ``RECHECK_S`` later would)."""
    global _FORGOTTEN
    _FORGOTTEN = (_FORGOTTEN + 1) % 1000
    importlib.invalidate_caches()


_LOADERS = [
    (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
    (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
]


def _find(name: str, parents: list[str] | None) -> tuple[Any, list[str] | None]:
    """A module's spec (None when absent) and its package folders, found without importing
    it or its parents (``parents``: the folders of its parent package; None: top level)."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        path = getattr(module, "__path__", None)
        return module.__spec__, [str(p) for p in path] if path is not None else None
    if parents is None:
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            return spec, None
        return spec, [str(p) for p in spec.submodule_search_locations]
    portions: list[str] = []
    for folder in parents:
        spec = importlib.machinery.FileFinder(folder, *_LOADERS).find_spec(name)
        if spec is None:
            continue
        if spec.loader is not None:
            locations = spec.submodule_search_locations
            return spec, list(locations) if locations is not None else None
        portions += list(spec.submodule_search_locations or [])
    if portions:  # a namespace package
        return importlib.machinery.ModuleSpec(name, None, is_package=True), portions
    return None, None


@lru_cache(maxsize=8192)
def _missing_module(name: str, bucket: int) -> str | None:
    """The first dotted prefix of ``name`` that cannot be imported (None when all can), found
    without importing anything."""
    parts = name.split(".")
    if not all(parts):
        return name
    if parts[0] in sys.builtin_module_names:
        return None if len(parts) == 1 else name
    locations: list[str] | None = None
    for n in range(len(parts)):
        prefix = ".".join(parts[: n + 1])
        if n and not locations and prefix not in sys.modules:
            return prefix
        spec, locations = _find(prefix, locations)
        if spec is None:
            return prefix
    return None


def _module_file(name: str) -> tuple[str | None, list[str] | None]:
    """A module's source file and its package folders, found without importing it."""
    spec, locations = None, None
    parts = name.split(".")
    for n in range(len(parts)):
        spec, locations = _find(".".join(parts[: n + 1]), locations)
        if spec is None:
            return None, None
    return (spec.origin if spec is not None else None), locations


@lru_cache(maxsize=4096)
def _missing_name(target: str, bucket: int) -> str | None:
    """``cannot import name ...`` when module ``a`` surely lacks ``b`` (target "a:b"): its
    source binds no such name, has no submodule of that name, no ``*`` import and no module
    ``__getattr__``; None otherwise."""
    module, _, name = target.partition(":")
    root = _library_package()
    if root is not None and module.split(".")[0] == root.name:
        return None  # lm-eval's own modules are read as modules, not checked name by name
    if _missing_module(module, bucket) is not None:
        return None
    origin, locations = _module_file(module)
    if not origin or not origin.endswith(".py"):
        return None
    if _may_bind(origin, name):
        return None
    if locations and _find(f"{module}.{name}", locations)[0] is not None:
        return None
    return f"cannot import name {name!r} from {module!r} ({origin})"


_STAR = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\*", re.MULTILINE)


def _may_bind(origin: str, name: str, depth: int = 0) -> bool:
    """Whether module file ``origin`` may bind ``name`` at import: its text names it, defines
    a module ``__getattr__``, replaces itself in ``sys.modules`` or ``*``-imports a module
    that may (another package's: always may). Read as text, which is cheap for big
    ``__init__`` files and errs on the side of "may"."""
    try:
        text = Path(origin).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    if re.search(rf"\b{re.escape(name)}\b", text) or "__getattr__" in text \
            or "sys.modules[" in text:
        return True
    for dots, module in _STAR.findall(text):
        if not dots or depth > 4:
            return True
        folder = Path(origin).parent
        for _ in range(len(dots) - 1):
            folder = folder.parent
        base = folder.joinpath(*module.split(".")) if module else folder
        file = base / "__init__.py" if (base / "__init__.py").is_file() \
            else base.with_suffix(".py")
        if not file.is_file() or (not name.startswith("_") and _may_bind(str(file), name,
                                                                          depth + 1)):
            return True
    return False


@lru_cache(maxsize=1024)
def _distribution_found(name: str, bucket: int) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def evaluate_cache() -> Path:
    """Where Hugging Face ``evaluate`` keeps the metric modules it has loaded."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    default = os.path.join(os.path.expanduser(hf_home), "modules")
    return Path(os.environ.get("HF_MODULES_CACHE", default)) / "evaluate_modules" / "metrics"


@lru_cache(maxsize=1024)
def _evaluate_cached(name: str, bucket: int) -> bool:
    """Whether evaluate can load metric ``name`` without the hub (as it looks in its cache)."""
    folder = evaluate_cache()
    kinds = ("metric", "comparison", "measurement")
    for folder_name in ([f"evaluate-{k}--{name}" for k in kinds] if "/" not in name
                        else [name.replace("/", "--")]):
        try:
            if any(len(h.name) == 64 for h in (folder / folder_name).iterdir()):
                return True
        except OSError:
            continue
    return False


def unmet(need: Need) -> str | None:
    """Why ``need`` is not met here, as "Class: message" of the error the code raises (None
    when it is met)."""
    bucket = _bucket()
    why: str | None = None
    if need.kind == "module":
        missing = _missing_module(need.target, bucket)
        if missing is not None:
            why = f"ModuleNotFoundError: No module named {missing!r}"
    elif need.kind == "name":
        problem = _missing_name(need.target, bucket)
        if problem is not None:
            why = f"ImportError: {problem}"
    elif need.kind == "distribution":
        if not _distribution_found(need.target, bucket):
            why = f"PackageNotFoundError: No package metadata was found for {need.target}"
    elif need.kind == "program":
        if shutil.which(need.target) is None:
            why = f"RuntimeError: program {need.target!r} is not on PATH"
    elif need.kind == "evaluate" and not _evaluate_cached(need.target, bucket):
        why = (f"FileNotFoundError: loads Hugging Face evaluate's metric {need.target!r} when "
               f"imported, which is not in evaluate's cache ({evaluate_cache()}) and needs "
               "the hub")
    if why is None or not need.raises:
        return why
    cls, sep, message = need.raises.partition(": ")
    own_cls, _, own_message = why.partition(": ")
    return f"{own_cls if cls == '*' else cls}: {message if sep else own_message}"


def first_unmet(needs: tuple[Need, ...]) -> str | None:
    """The first of ``needs`` not met here ("Class: message" of the error it raises);
    remembered for ``RECHECK_S``."""
    return _first_unmet(needs, _bucket())


@lru_cache(maxsize=4096)
def _first_unmet(needs: tuple[Need, ...], bucket: int) -> str | None:
    for need in needs:
        why = unmet(need)
        if why is not None:
            return why
    return None


def ref_problem(ref: Ref, why: str | None) -> str | None:
    """The error loading the task gives for ``ref`` when its needs are unmet with ``why``
    (``first_unmet``), worded as the task engine words it; None when ``why`` is None."""
    if why is None:
        return None
    cls, _, message = why.partition(": ")
    where = f"{ref.source}: key {ref.key!r}"
    if ref.key == "class":
        return f"{where} {ref.spec.rpartition('.')[2]}() failed: {cls}({message!r})"
    if cls in _IMPORT_ERRORS or cls == "PackageNotFoundError":
        return f"{where} !function {ref.spec!r}: cannot import module ({message})"
    return f"{where} !function {ref.spec!r}: module failed to load: {cls}({message!r})"


def stored_needs(needs: list[Need] | tuple[Need, ...]) -> list[list[str | None]]:
    """``needs`` as the index stores them: those the standard library always meets left out."""
    return [n.to_json() for n in needs if n.raises is not None
            or n.kind not in ("module", "name")
            or n.target.split(".")[0].split(":")[0] not in sys.stdlib_module_names]
