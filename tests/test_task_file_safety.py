"""A task file is data, not code (``!function`` aside, which the operator allows): its templates
render in Jinja's sandbox, its ``include:`` reads only the task folders in use, and a template
that fails on a document is one line naming the file and key."""

from __future__ import annotations

import pytest

from evalfleet.tasks import TaskError, TaskManager

ARC = """task: {name}
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
output_type: multiple_choice
test_split: test
doc_to_text: "{text}"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
"""


def _task(tmp_path, data_dir, name: str, text: str):
    (tmp_path / f"{name}.yaml").write_text(ARC.format(name=name, text=text))
    return TaskManager(include_paths=[tmp_path], data_dir=data_dir).load([name]).tasks[name]


def test_a_template_cannot_reach_pythons_internals(tmp_path, data_dir):
    """Before: this ran ``id`` on the coordinator and put its output in the prompt."""
    task = _task(tmp_path, data_dir, "escape",
                 "{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    with pytest.raises(TaskError) as info:
        task.build_requests(limit=1)
    message = str(info.value)
    assert "escape.yaml" in message and "'doc_to_text'" in message
    assert "SecurityError" in message and "uid=" not in message


def test_a_template_failing_on_a_document_is_one_line(tmp_path, data_dir):
    """Before: ``{{ 1/0 }}`` escaped as a ZeroDivisionError with a traceback (INTERNAL)."""
    task = _task(tmp_path, data_dir, "divide", "{{ 1/0 }}")
    with pytest.raises(TaskError) as info:
        task.build_requests(limit=1)
    assert "divide.yaml" in str(info.value) and "ZeroDivisionError" in str(info.value)


def test_the_sandbox_renders_lm_evals_templates_the_same(tmp_path, data_dir):
    """Methods of the document's values (list.index, str.format, filters) still work."""
    task = _task(tmp_path, data_dir, "plain",
                 "{{ 'Q: {}'.format(question.strip()) | regex_replace('  ', ' ') }}\\nA:")
    request = task.build_requests(limit=1)[0]
    doc = task.eval_docs(1)[0][1]
    assert request.arguments[0] == f"Q: {doc['question'].strip()}\nA:".replace("  ", " ")


def test_include_reads_only_the_task_folders_in_use(tmp_path, data_dir):
    """Before: ``include:`` read any file the coordinator could (the YAML parser's error then
    quoted it)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("dataset_path: x\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sneaky.yaml").write_text(f"include: {outside / 'secret.yaml'}\ntask: sneaky\n")
    (tasks / "local_base.yaml").write_text(ARC.format(name="local_base", text="{{question}}"))
    (tasks / "fine.yaml").write_text("include: local_base.yaml\ntask: fine\n")
    manager = TaskManager(include_paths=[tasks], data_dir=data_dir)
    with pytest.raises(TaskError) as info:
        manager.load(["sneaky"])
    assert "is outside the task folders in use" in str(info.value)
    assert "sneaky.yaml" in str(info.value)
    assert manager.load(["fine"]).tasks["fine"].cfg.dataset_name == "ARC-Easy"
