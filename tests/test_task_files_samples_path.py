"""A task's name is data from a task file: ``samples_<task>_<date>.jsonl`` stays inside the
output folder whatever the name holds, and ordinary names keep lm-eval's file names."""

from __future__ import annotations

import json

from evalfleet.client.submit import write_outputs
from evalfleet.common.file_names import MAX_NAME_BYTES, file_name_part
from evalfleet.v1 import coordinator_pb2 as cpb

RESULTS = cpb.EvaluationResults(results_json=json.dumps({"model_name": "org/model"}))


def _record(task: str) -> cpb.SampleRecord:
    return cpb.SampleRecord(task=task, json=json.dumps({"doc_id": 0, "task": task}))


def test_samples_files_stay_in_the_output_folder(tmp_path):
    """Before: ``x/../../escaped`` wrote ``escaped_<date>.jsonl`` beside the output folder (a
    folder named ``samples_x`` is all it needs), and a NUL in a name raised ValueError."""
    out = tmp_path / "out"
    folder = out / "org__model"
    (folder / "samples_x").mkdir(parents=True)
    hostile = ["x/../../escaped", "../../etc/x", "/abs/path", "a\\b", "nul\x00byte", "t" * 400]
    ordinary = ["arc_easy", "mmlu_abstract_algebra", "group::sub-task.v2", "hellaswag (1)"]
    written = write_outputs(str(out), RESULTS, [_record(t) for t in hostile + ordinary])
    everything = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert everything == sorted(written)
    assert all(p.parent == folder for p in written)
    stamp = written[0].name.removeprefix("results_").removesuffix(".json")
    names = {p.name for p in written[1:]}
    for task in ordinary:  # lm-eval's naming, unchanged
        assert f"samples_{task}_{stamp}.jsonl" in names
    assert len(names) == len(hostile) + len(ordinary)  # no two tasks share a file
    by_task = {json.loads(p.read_text())["task"]: p.name for p in written[1:]}
    assert by_task["../../etc/x"].startswith("samples_.._.._etc_x-")
    assert all(len(n.encode()) < 255 for n in names)


def test_file_name_part_changes_only_what_must_change():
    assert file_name_part("arc_easy") == "arc_easy"
    assert file_name_part("a/b") != file_name_part("a_b")  # a hash keeps them apart
    assert file_name_part("a/b").startswith("a_b-")
    assert len(file_name_part("é" * 400).encode()) <= MAX_NAME_BYTES + 9
