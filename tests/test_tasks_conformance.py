"""Conformance: evalfleet builds exactly lm-eval 0.4.13's requests (first 50 docs, in order).

lm-eval is driven offline like /work/shared/tools/lmeval_local.py does: an override YAML per task
(``include:`` the installed original, ``dataset_path: json`` + ``data_files`` from the mirror).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval")

from evalfleet.tasks import TaskManager  # noqa: E402

pytestmark = pytest.mark.reference

LIMIT = 50
SEED = 1234
LM_TASKS = Path(lm_eval.__file__).parent / "tasks"


@dataclass(frozen=True)
class Case:
    """One task checked against lm-eval."""

    lm_yaml: str  # relative to lm_eval/tasks
    shots: tuple[int | None, ...]  # num_fewshot overrides checked (None = task default)
    builtin_shots: tuple[int | None, ...]  # those the built-in YAML can do with the mirror
    extra: dict = field(default_factory=dict)  # extra overrides on both sides


#: the mirror lacks hellaswag's validation split: check its logic on train instead
_HELLASWAG_ON_TRAIN = {"validation_split": "train", "training_split": None}

CASES: dict[str, Case] = {
    "arc_easy": Case("arc/arc_easy.yaml", (None, 5), (None, 5)),
    "arc_challenge": Case("arc/arc_challenge.yaml", (None, 25), (None, 25)),
    "piqa": Case("piqa/piqa.yaml", (None, 5), (None,)),
    "hellaswag": Case("hellaswag/hellaswag.yaml", (None, 10), (None, 10), _HELLASWAG_ON_TRAIN),
    "mmlu_abstract_algebra": Case("mmlu/default/mmlu_abstract_algebra.yaml", (None, 5), (None, 5)),
    "mmlu_high_school_us_history": Case(
        "mmlu/default/mmlu_high_school_us_history.yaml", (None, 5), (None, 5)
    ),
    "winogrande": Case("winogrande/default.yaml", (None, 5), (None, 5)),
    "boolq": Case("super_glue/boolq/default.yaml", (None, 5), (None,)),
    "lambada_openai": Case("lambada/lambada_openai.yaml", (None, 2), (None, 2)),
    "truthfulqa_mc1": Case("truthfulqa/truthfulqa_mc1.yaml", (None, 5), (None, 5)),
    "truthfulqa_mc2": Case("truthfulqa/truthfulqa_mc2.yaml", (None, 5), (None, 5)),
    "wikitext": Case("wikitext/wikitext.yaml", (None,), (None,)),
    "gsm8k": Case("gsm8k/gsm8k.yaml", (None, 0, 8), (None, 0, 8)),
    "kobest_hellaswag": Case("kobest/kobest_hellaswag.yaml", (None, 5), (None, 5)),
    "kobest_copa": Case("kobest/kobest_copa.yaml", (None, 5), (None, 5)),
}


def _merged(path: Path) -> dict:
    """The YAML with includes merged (``!function`` kept as text)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda ld, node: "!function " + ld.construct_scalar(node))
    cfg = yaml.load(path.read_text(), Loader=Loader) or {}  # noqa: S506
    inc = cfg.pop("include", None)
    if inc:
        base: dict = {}
        for i in [inc] if isinstance(inc, str) else inc:
            base.update(_merged(Path(i) if os.path.isabs(i) else path.parent / i))
        base.update(cfg)
        cfg = base
    return cfg


def write_overrides(
    data_dir: Path, out: Path, yaml_paths: list[Path], extra: dict[str, dict] | None = None
) -> list[str]:
    """lmeval_local.py-style override files (only for the given YAMLs); returns task names."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for path in yaml_paths:
        cfg = _merged(path)
        folder = data_dir / cfg["dataset_path"] / str(cfg.get("dataset_name") or "default")
        files = {f.name.split(".")[0]: str(f) for f in sorted(folder.iterdir())}
        over = {
            "include": str(path),
            "task": cfg["task"],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
        }
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            if cfg.get(key) and cfg[key] not in files:
                over[key] = None
        over.update((extra or {}).get(cfg["task"], {}))
        (out / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(over, sort_keys=False))
        names.append(cfg["task"])
    return names


def lm_eval_requests(task, num_fewshot: int | None) -> list[tuple]:
    """lm-eval's own requests, set up as simple_evaluate does."""
    if num_fewshot is not None:
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=SEED)
    task.build_all_requests(limit=LIMIT)
    return [(i.request_type, i.doc_id, i.idx, i.args, i.repeats) for i in task.instances]


def ours(task, num_fewshot: int | None) -> list[tuple]:
    reqs = task.build_requests(limit=LIMIT, num_fewshot=num_fewshot, fewshot_seed=SEED)
    return [(r.request_type, r.doc_id, r.idx, r.arguments, r.repeats) for r in reqs]


@pytest.fixture(scope="module")
def override_dir(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("lmeval_overrides")
    paths = [LM_TASKS / c.lm_yaml for c in CASES.values()]
    write_overrides(data_dir, out, paths, {n: c.extra for n, c in CASES.items() if c.extra})
    return out


@pytest.fixture(scope="module")
def reference(override_dir) -> dict[tuple[str, int | None], list[tuple]]:
    """lm-eval's requests for every (task, shots) case, built once per module."""
    from lm_eval.tasks import TaskManager as LmTaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("datasets").setLevel(logging.ERROR)
    out = {}
    for name, case in CASES.items():
        tm = LmTaskManager(include_path=str(override_dir), include_defaults=False)
        task = tm.load([name])["tasks"][name]
        configured = task.get_config("num_fewshot")
        for n in case.shots:
            task.set_config(key="num_fewshot", value=configured)  # as freshly loaded
            out[(name, n)] = lm_eval_requests(task, n)
    return out


@pytest.fixture(scope="module")
def builtin_manager(data_dir, tmp_path_factory) -> TaskManager:
    """Built-in tasks; cases with extra overrides get a small override YAML of their own."""
    out = tmp_path_factory.mktemp("builtin_overrides")
    probe = TaskManager(data_dir=data_dir)
    by_name = {e.name: e for e in probe.list()}
    for name, case in CASES.items():
        if case.extra:
            over = {"include": str(by_name[name].yaml_path), "task": name, **case.extra}
            (out / f"{name}.yaml").write_text(yaml.safe_dump(over))
    return TaskManager(include_paths=[out], data_dir=data_dir)


@pytest.fixture(scope="module")
def lm_yaml_manager(data_dir, override_dir) -> TaskManager:
    """evalfleet reading lm-eval's own YAMLs through the override files."""
    return TaskManager(include_paths=[override_dir], data_dir=data_dir)


def _assert_same(expected: list[tuple], got: list[tuple]) -> None:
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert g == e


BUILTIN_CASES = [(n, s) for n, c in CASES.items() for s in c.builtin_shots]
LM_YAML_CASES = [(n, s) for n, c in CASES.items() for s in c.shots]


@pytest.mark.parametrize("name,shots", BUILTIN_CASES)
def test_builtin_matches_lm_eval(name, shots, reference, builtin_manager):
    task = builtin_manager.load([name]).tasks[name]
    assert task.cfg.dataset_path != "json"  # really the built-in, reading the mirror
    _assert_same(reference[(name, shots)], ours(task, shots))


@pytest.mark.parametrize("name,shots", LM_YAML_CASES)
def test_lm_eval_yaml_via_include_paths_matches(name, shots, reference, lm_yaml_manager):
    """lm-eval's own YAML files (+ override) load in evalfleet and give identical requests."""
    task = lm_yaml_manager.load([name]).tasks[name]
    assert task.cfg.dataset_path == "json"
    _assert_same(reference[(name, shots)], ours(task, shots))


def test_effective_num_fewshot(builtin_manager):
    tree = builtin_manager.load(["gsm8k", "truthfulqa_mc1", "arc_easy"])
    expected = {"gsm8k": 5, "truthfulqa_mc1": 0, "arc_easy": 3}
    for name, task in tree.tasks.items():
        task.build_requests(limit=1, num_fewshot=3 if name != "gsm8k" else None)
        assert task.effective_num_fewshot == expected[name]


SAMPLES = [41, 3, 17, 0, 3]  # unsorted, repeated: lm-eval evaluates them in split order, once


@pytest.mark.parametrize("name,shots", [("arc_easy", 3), ("mmlu_abstract_algebra", 5)])
def test_samples_select_the_same_documents_as_lm_eval(name, shots, override_dir,
                                                      builtin_manager):
    """``--samples``: lm-eval renumbers the chosen docs from 0 and draws shots for them only."""
    from lm_eval.tasks import TaskManager as LmTaskManager

    tm = LmTaskManager(include_path=str(override_dir), include_defaults=False)
    lm_task = tm.load([name])["tasks"][name]
    if lm_task.get_config("num_fewshot") != 0:
        lm_task.set_config(key="num_fewshot", value=shots)
    lm_task.set_fewshot_seed(seed=SEED)
    lm_task.build_all_requests(samples=SAMPLES)
    expected = [(i.request_type, i.doc_id, i.idx, i.args, i.repeats) for i in lm_task.instances]
    task = builtin_manager.load([name]).tasks[name]
    got = task.build_requests(samples=SAMPLES, num_fewshot=shots, fewshot_seed=SEED)
    _assert_same(expected, [(r.request_type, r.doc_id, r.idx, r.arguments, r.repeats)
                            for r in got])
    assert sorted({r.doc_id for r in got}) == [0, 1, 2, 3]
    assert [d for _, d in task.eval_docs(samples=SAMPLES)] == [
        task.all_eval_docs()[i] for i in (0, 3, 17, 41)]


def test_samples_outside_the_split_name_the_range(builtin_manager):
    from evalfleet.tasks import SampleIndexError

    task = builtin_manager.load(["arc_easy"]).tasks["arc_easy"]
    n = len(task.all_eval_docs())
    with pytest.raises(SampleIndexError, match=rf"\[{n}\] are outside the {n} documents"):
        task.eval_docs(samples=[0, n])
