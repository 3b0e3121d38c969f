"""The thin client: ``pip install evalfleet`` is the client alone (``eval --coordinator``,
``results``, ``workers``, ``gate``) on grpcio, protobuf, a table library and the statistics of
``compare`` and ``gate``; the services and the backends are extras, and a command that needs a
missing one says which in one line.

The acceptance test builds a wheel from the checkout, installs it alone into a fresh venv (its
dependencies from the package index; pip's cache makes a second run quick) and drives a running
fleet (the session's coordinator and tiny-model worker) with that venv's ``evalfleet``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

#: Top-level modules the client must never import (the issue's list and their kin).
HEAVY_MODULES = ("torch", "transformers", "numba", "llvmlite", "datasets", "psycopg",
                 "psycopg_pool", "sklearn", "sacrebleu", "matplotlib", "accelerate", "vllm",
                 "pyarrow", "pandas")
#: Distributions the base install must not pull in.
HEAVY_DISTRIBUTIONS = ("torch", "transformers", "numba", "llvmlite", "datasets", "psycopg",
                       "psycopg-pool", "psycopg-binary", "scikit-learn", "sacrebleu", "matplotlib",
                       "accelerate", "safetensors", "gguf", "openai", "anthropic", "pyarrow",
                       "pandas", "jinja2", "grpcio-health-checking", "grpcio-reflection")
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
POLICY = REPO_ROOT / "examples" / "gate.yaml"


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0).lower().replace("_", "-")


def _closure(extra: str) -> set[str]:
    """Every distribution an extra of pyproject.toml requires, through evalfleet[...] ones."""
    names: set[str] = set()
    for requirement in PROJECT["project"]["optional-dependencies"][extra]:
        inner = re.match(r"evalfleet\[([^\]]+)\]", requirement)
        if inner:
            for name in inner.group(1).split(","):
                names |= _closure(name.strip())
        else:
            names.add(_name(requirement))
    return names


def test_the_base_requirements_are_the_client_s_and_make_install_keeps_everything():
    base = {_name(r) for r in PROJECT["project"]["dependencies"]}
    assert not base & set(HEAVY_DISTRIBUTIONS), base & set(HEAVY_DISTRIBUTIONS)
    assert {"grpcio", "protobuf", "rich", "pytablewriter"} <= base
    extras = PROJECT["project"]["optional-dependencies"]
    for extra in ("coordinator", "hf", "api", "vllm"):
        assert extra in extras
    # `make install` installs '.[test]': every extra but the GPU-only ones (vllm, quant).
    assert "-e '.[test]'" in (REPO_ROOT / "Makefile").read_text()
    everything = _closure("test")
    for extra in set(extras) - {"vllm", "quant", "test"}:
        assert _closure(extra) <= everything, (extra, _closure(extra) - everything)
    assert {"torch", "numba", "datasets", "psycopg", "openai", "matplotlib"} <= everything


def test_the_image_installs_the_services_extras():
    """The one image runs the coordinator and the workers: the base install would lack both."""
    installs = re.findall(r"pip install (.+?)(?:\s*&&|$)",
                          (REPO_ROOT / "deploy" / "Dockerfile").read_text(), flags=re.M)
    local = [line for line in installs if line.strip("'\" ").startswith(".")]
    assert len(local) == 1, installs
    extras = set(re.search(r"\[([^\]]*)\]", local[0]).group(1).split(","))
    assert {"coordinator", "hf", "api"} <= extras, local[0]


# -- the extras: what a command needs, and the line when it is missing ------------------------


@pytest.fixture()
def fake_metadata(monkeypatch):
    """evalfleet's requirements as given, read by ``common/extras.py`` instead of its own."""
    from evalfleet.common import extras

    def use(lines: list[str] | None) -> None:
        def requires(name: str) -> list[str]:
            if lines is None:
                raise extras.metadata.PackageNotFoundError(name)
            assert name == "evalfleet"
            return lines

        monkeypatch.setattr(extras.metadata, "requires", requires)
        extras.extra_requirements.cache_clear()

    yield use
    extras.extra_requirements.cache_clear()


ABSENT = "evalfleet-test-absent"


def test_a_missing_extra_is_one_line_naming_it_its_packages_and_pip(fake_metadata):
    from evalfleet.common.extras import MissingExtraError, missing_packages, require_extras

    fake_metadata(["grpcio>=1.85", f'{ABSENT}-torch>=2; extra == "hf"',
                   'pytest>=8; extra == "hf"', f'{ABSENT}-vllm; extra == "vllm"',
                   'evalfleet[hf]; extra == "vllm"', 'pytest; extra == "plot"',
                   f'{ABSENT}-psycopg[binary]>=3.2; extra == "coordinator"'])
    assert missing_packages("hf") == [f"{ABSENT}-torch"]  # pytest is installed
    assert missing_packages("vllm") == [f"{ABSENT}-vllm", f"{ABSENT}-torch"]  # through [hf]
    assert missing_packages("coordinator") == [f"{ABSENT}-psycopg"]
    assert missing_packages("plot") == [] and missing_packages("unknown") == []
    require_extras("results plot", "plot")
    with pytest.raises(MissingExtraError) as raised:
        require_extras("serve worker --backend vllm", "vllm")
    assert raised.value.message == (
        f"serve worker --backend vllm needs the vllm extra ({ABSENT}-vllm, {ABSENT}-torch not "
        "installed): pip install 'evalfleet[vllm]'")
    with pytest.raises(MissingExtraError) as raised:
        require_extras("eval", "coordinator", "plot", "hf")
    assert raised.value.message.startswith("eval needs the coordinator and hf extras (")
    assert raised.value.message.endswith("pip install 'evalfleet[coordinator,hf]'")


def test_without_evalfleet_s_metadata_nothing_is_reported_missing(fake_metadata):
    from evalfleet.common.extras import missing_packages, require_extras

    fake_metadata(None)
    assert missing_packages("hf") == []
    require_extras("serve worker --backend hf", "hf")


@pytest.mark.parametrize("argv,needs", [
    (["eval", "--coordinator", "h:1", "--tasks", "arc_easy"], []),
    (["eval", "--coordinator", "h:1", "--tasks", "arc_easy", "--write_out"], ["coordinator"]),
    (["eval", "--coordinator", "h:1", "--tasks", "a", "--mlflow_args", "x=1"], ["mlflow"]),
    (["eval", "--tasks", "arc_easy"], ["coordinator", "hf"]),
    (["eval", "--model", "local-chat-completions", "--tasks", "a"], ["coordinator", "api"]),
    (["eval", "--model", "anthropic", "--tasks", "a"], ["coordinator", "api"]),
    (["eval", "--model", "vllm", "--tasks", "a"], ["coordinator", "vllm"]),
    (["eval", "--model", "no-such-backend", "--tasks", "a"], ["coordinator"]),
    (["eval", "--coordinator", "h:1", "--tasks", "list"], ["coordinator"]),
    (["serve", "worker", "--backend", "openai-completions"], ["api"]),
    (["serve", "coordinator"], ["coordinator"]),
    (["warmup"], ["coordinator"]),
    (["tasks", "show", "arc_easy"], ["coordinator"]),
    (["results", "show", "x"], []),
    (["results", "compare", "a", "b"], []),
    (["results", "report", "a", "--out", "r.html"], []),
    (["results", "plot", "a", "--out", "p.png"], ["plot"]),
    (["results", "fetch", "ID", "--coordinator", "h:1"], []),
    (["results", "fetch", "ID", "--store", "jobs.db"], []),
    (["results", "fetch", "ID", "--store", "postgresql://u@h/db"], ["coordinator"]),
    (["workers", "--coordinator", "h:1"], []),
    (["gate", "--policy", "p.yaml", "a", "b"], []),
    (["gate", "--policy", "p.yaml", "a", "b", "--mlflow_args", "x=1"], ["mlflow"]),
])
def test_each_command_needs_the_extras_of_what_it_runs_here(argv, needs):
    from evalfleet.client.cli import build_parser
    from evalfleet.client.extras_needed import needed_extras

    args = build_parser().parse_args(argv)
    assert [e for _, extras in needed_extras(args) for e in extras] == needs


def test_the_client_commands_import_no_model_or_service_library_where_installed(coordinator,
                                                                                 tmp_path):
    """In the full install (torch, numba, datasets... present) the client's commands still
    import none of them: the thin install is not a matter of luck."""
    script = f"""
import json, sys
from evalfleet.client.cli import main
address = {coordinator.address!r}
assert main(["eval", "--coordinator", address, "--tasks", "arc_easy", "--limit", "6",
             "--output_path", "out/a", "--no_progress"]) == 0
# --trust_remote_code is the coordinator's data's: nothing here (datasets) is told of it
assert main(["eval", "--coordinator", "127.0.0.1:1", "--tasks", "arc_easy", "--no_progress",
             "--trust_remote_code"]) == 2
from pathlib import Path
(results,) = Path("out/a").rglob("results_*.json")
evaluation_id = json.loads(results.read_text())["config"]["evaluation_id"]
assert main(["results", evaluation_id, "--coordinator", address]) == 0
assert main(["results", "compare", "out/a", "out/a"]) == 0
assert main(["gate", "--policy", {str(POLICY)!r}, "out/a", "out/a"]) in (0, 1, 3)
assert main(["workers", "--coordinator", address]) == 0
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY_MODULES!r}))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# -- the thin venv ---------------------------------------------------------------------------


def _env(venv: Path) -> dict[str, str]:
    """The thin venv's environment: its bin first, nothing of this checkout on the path, and
    bytecode written as a user's venv writes it (the first command compiles what it imports)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["COLUMNS"] = "200"
    return env


def _build_wheel(out: Path) -> Path:
    """A wheel of the checkout's packages (as `pip wheel .` builds it), built from a copy so
    that the shared checkout gets no build/ or egg-info."""
    src = out / "src"
    folders = {Path(p).parts[0] for p in PROJECT["tool"]["setuptools"]["package-dir"].values()}
    for folder in folders:
        shutil.copytree(REPO_ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(out / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (out / "dist").glob("evalfleet-*.whl")
    return wheel


def _base_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


@pytest.fixture(scope="module")
def thin_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the base distribution alone, from a wheel of the checkout."""
    root = tmp_path_factory.mktemp("thin")
    wheel = _build_wheel(root)
    base = {_name(r) for r in _base_requirements(wheel)}
    assert not base & set(HEAVY_DISTRIBUTIONS), f"the wheel requires {base}"
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    # This venv's pip installs into the new one (pip --python): the dependencies come from the
    # package index (or pip's cache), as a CI runner's `pip install evalfleet` gets them.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--no-compile", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _thin(venv: Path, *argv: str, cwd: Path, importtime: bool = False,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the thin venv's `evalfleet` console script."""
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([str(venv / "bin" / "python"), *flags, str(venv / "bin" / "evalfleet"),
                           *argv], capture_output=True, text=True, env=_env(venv), cwd=cwd,
                          timeout=timeout)


def _imported(importtime_stderr: str) -> set[str]:
    """The top-level modules in ``-X importtime``'s report."""
    return {line.split("|")[-1].strip().split(".")[0] for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_the_base_install_holds_no_heavy_library(thin_venv):
    code = ("import importlib.metadata as m, json; print(json.dumps(sorted("
            "d.metadata['Name'].lower().replace('_', '-') for d in m.distributions())))")
    out = subprocess.run([str(thin_venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True, env=_env(thin_venv)).stdout
    installed = set(json.loads(out))
    assert "evalfleet" in installed and {"grpcio", "protobuf"} <= installed
    assert not installed & set(HEAVY_DISTRIBUTIONS), installed & set(HEAVY_DISTRIBUTIONS)
    probe = subprocess.run([str(thin_venv / "bin" / "python"), "-X", "importtime", "-c",
                            "import evalfleet.client.cli"], capture_output=True, text=True,
                           env=_env(thin_venv), cwd=thin_venv)
    assert probe.returncode == 0, probe.stderr[-2000:]
    modules = _imported(probe.stderr)
    assert "evalfleet" in modules and "grpc" in modules
    assert not modules & set(HEAVY_MODULES)


def test_the_thin_client_runs_a_job_fetches_compares_and_gates(thin_venv, coordinator,
                                                                tmp_path):
    address = coordinator.address
    run = _thin(thin_venv, "eval", "--coordinator", address, "--model", "hf", "--tasks",
                "arc_easy", "--limit", "6", "--log_samples", "--output_path", "out/a",
                "--no_progress", cwd=tmp_path, importtime=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^\|\s*arc_easy\s*\|", run.stdout, re.M), run.stdout
    assert not _imported(run.stderr) & set(HEAVY_MODULES), _imported(run.stderr)
    (results_a,) = (tmp_path / "out" / "a").rglob("results_*.json")
    evaluation_id = json.loads(results_a.read_text())["config"]["evaluation_id"]

    fetched = _thin(thin_venv, "results", evaluation_id, "--coordinator", address,
                    "--output_path", "out/b", cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    (results_b,) = (tmp_path / "out" / "b").rglob("results_*.json")
    assert json.loads(results_b.read_text())["results"] == \
        json.loads(results_a.read_text())["results"]

    shown = _thin(thin_venv, "results", "show", "out/b", cwd=tmp_path)
    assert shown.returncode == 0 and "arc_easy" in shown.stdout, shown.stderr[-3000:]
    compared = _thin(thin_venv, "results", "compare", "out/a", "out/b", "--fail-if-worse",
                     "acc=0.01", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "arc_easy" in compared.stdout and "McNemar" in compared.stdout, compared.stdout

    workers = _thin(thin_venv, "workers", "--coordinator", address, "--json", cwd=tmp_path)
    assert workers.returncode == 0, workers.stderr[-3000:]
    assert len(workers.stdout.strip().splitlines()) >= 1

    exit_codes = {"GO": 0, "NO-GO": 1, "INCONCLUSIVE": 3}
    local = _thin(thin_venv, "gate", "--policy", str(POLICY), "out/a", "out/b", "--json",
                  cwd=tmp_path)
    verdict = json.loads(local.stdout)
    assert local.returncode == exit_codes[verdict["verdict"]], local.stderr[-3000:]
    remote = _thin(thin_venv, "gate", "--coordinator", address, "--policy", str(POLICY),
                   evaluation_id, evaluation_id, "--json", cwd=tmp_path)
    assert remote.returncode == local.returncode, remote.stderr[-3000:]
    assert json.loads(remote.stdout)["verdict"] == verdict["verdict"]


#: Commands of the extras, with the start of the line each gives in the base install.
NEEDS_EXTRAS = [
    (["serve", "worker", "--backend", "hf"], "serve worker --backend hf needs the hf extra"),
    (["serve", "worker", "--backend", "local-completions"],
     "serve worker --backend local-completions needs the api extra"),
    (["serve", "coordinator"], "serve coordinator needs the coordinator extra"),
    (["eval", "--model", "hf", "--tasks", "arc_easy"],
     "eval --model hf without --coordinator (an embedded coordinator and worker) needs the "
     "coordinator and hf extras"),
    (["tasks", "list"], "tasks list needs the coordinator extra"),
    (["results", "plot", "a", "b", "--out", "x.png"], "results plot needs the plot extra"),
]
_RUN_EACH = """
import contextlib, io, json, sys
from evalfleet.client.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out.append([main(argv), err.getvalue()])
print(json.dumps(out))
"""


def test_a_command_of_a_missing_extra_says_which_in_one_line(thin_venv, tmp_path):
    console = _thin(thin_venv, *NEEDS_EXTRAS[0][0], cwd=tmp_path, timeout=60)
    assert console.returncode == 2 and console.stderr.count("\n") == 1, console.stderr[-2000:]
    done = subprocess.run([str(thin_venv / "bin" / "python"), "-c", _RUN_EACH,
                           json.dumps([argv for argv, _ in NEEDS_EXTRAS])], capture_output=True,
                          text=True, env=_env(thin_venv), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for (argv, needs), (code, line) in zip(NEEDS_EXTRAS, json.loads(done.stdout), strict=True):
        assert code == 2, (argv, code, line)
        line = line.strip()
        assert "\n" not in line and line.startswith(f"error: {needs} ("), (argv, line)
        extras = re.search(r"needs the (.+?) extras? \(", line).group(1).split(" and ")
        assert line.endswith(f"not installed): pip install 'evalfleet[{','.join(extras)}]'"), line
    assert console.stderr.strip() == json.loads(done.stdout)[0][1].strip()
