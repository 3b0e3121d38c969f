"""Malformed task files give one clear TaskError naming the file, the key and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from evalfleet.tasks import DataNotFoundError, TaskError, TaskManager, TaskNotFoundError

GOOD = """\
task: {name}
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _manager(tmp_path: Path, data_dir: Path) -> TaskManager:
    return TaskManager(include_paths=[tmp_path], data_dir=data_dir)


def _check(err: TaskError, path: Path, key: str | None, problem: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    if key:
        assert repr(key) in msg or key in msg
    assert problem in msg


def test_good_file_loads(tmp_path, data_dir):
    _write(tmp_path, "good", GOOD.format(name="good"))
    task = _manager(tmp_path, data_dir).load(["good"]).tasks["good"]
    assert len(task.build_requests(limit=2)) == 8


def test_bad_yaml_by_path(tmp_path, data_dir):
    path = _write(tmp_path, "bad", "task: bad\ndoc_to_text: [unclosed\n")
    manager = _manager(tmp_path, data_dir)
    with pytest.raises(TaskError) as info:
        manager.load([str(path)])
    _check(info.value, path, None, "invalid YAML at line")


def test_bad_yaml_is_reported_when_name_is_unknown(tmp_path, data_dir):
    path = _write(tmp_path, "bad", "task: bad\ndoc_to_text: [unclosed\n")
    with pytest.raises(TaskNotFoundError) as info:
        _manager(tmp_path, data_dir).load(["bad"])
    assert str(path) in str(info.value) and "invalid YAML" in str(info.value)


def test_unknown_key(tmp_path, data_dir):
    path = _write(tmp_path, "unk", GOOD.format(name="unk") + "doc_to_txet: oops\n")
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["unk"])
    _check(info.value, path, "doc_to_txet", "unknown key")


def test_missing_template_field(tmp_path, data_dir):
    text = GOOD.format(name="tmpl").replace("{{question}}", "{{qestion}}")
    path = _write(tmp_path, "tmpl", text)
    task = _manager(tmp_path, data_dir).load(["tmpl"]).tasks["tmpl"]
    with pytest.raises(TaskError) as info:
        task.build_requests(limit=1)
    _check(info.value, path, "doc_to_text", "'qestion' is undefined")


def test_template_syntax_error(tmp_path, data_dir):
    text = GOOD.format(name="syn").replace("{{question}}", "{{question}")
    path = _write(tmp_path, "syn", text)
    task = _manager(tmp_path, data_dir).load(["syn"]).tasks["syn"]
    with pytest.raises(TaskError) as info:
        task.build_requests(limit=1)
    _check(info.value, path, "doc_to_text", "TemplateSyntaxError")


def test_missing_function(tmp_path, data_dir):
    (tmp_path / "helpers.py").write_text("def other(doc):\n    return 'x'\n")
    text = GOOD.format(name="fn").replace(
        'doc_to_text: "Question: {{question}}\\nAnswer:"', "doc_to_text: !function helpers.nope"
    )
    path = _write(tmp_path, "fn", text)
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["fn"])
    _check(info.value, path, "doc_to_text", "has no attribute 'nope'")


def test_missing_function_module(tmp_path, data_dir):
    text = GOOD.format(name="mod") + "process_docs: !function no_such_module_xyz.fn\n"
    path = _write(tmp_path, "mod", text)
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["mod"])
    _check(info.value, path, "process_docs", "cannot import module")


def test_missing_split(tmp_path, data_dir):
    text = GOOD.format(name="split").replace("test_split: test", "test_split: nosuch")
    path = _write(tmp_path, "split", text)
    task = _manager(tmp_path, data_dir).load(["split"]).tasks["split"]
    with pytest.raises(DataNotFoundError) as info:
        task.eval_docs()
    _check(info.value, path, "test_split", "not found")
    assert any("ARC-Easy/nosuch.jsonl" in p for p in info.value.paths_searched)


def test_missing_include(tmp_path, data_dir):
    path = _write(tmp_path, "inc", "include: nowhere.yaml\ntask: inc\n")
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["inc"])
    _check(info.value, path, "include", "does not exist")


def test_bad_output_type(tmp_path, data_dir):
    text = GOOD.format(name="ot").replace("multiple_choice", "multi_choice")
    path = _write(tmp_path, "ot", text)
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["ot"])
    _check(info.value, path, "output_type", "is not one of")


def test_unknown_filter(tmp_path, data_dir):
    text = (
        GOOD.format(name="flt") + "filter_list:\n  - name: x\n    filter:\n      - function: nope\n"
    )
    path = _write(tmp_path, "flt", text)
    with pytest.raises(TaskError) as info:
        _manager(tmp_path, data_dir).load(["flt"])
    _check(info.value, path, "filter_list[0].filter[0]", "unknown filter 'nope'")


def test_unknown_name_suggests(data_dir):
    with pytest.raises(TaskNotFoundError) as info:
        TaskManager(data_dir=data_dir).load(["arc_esay"])
    assert info.value.name == "arc_esay"
    assert "arc_easy" in info.value.suggestions


def test_missing_dataset_not_in_mirror(tmp_path, data_dir):
    text = GOOD.format(name="nodata").replace("allenai/ai2_arc", "nobody/nothing")
    path = _write(tmp_path, "nodata", text)
    task = _manager(tmp_path, data_dir).load(["nodata"]).tasks["nodata"]
    with pytest.raises(DataNotFoundError) as info:
        task.eval_docs()
    assert str(path) in str(info.value) and "nobody/nothing" in str(info.value)
