"""Task files the index cannot use are named, not skipped in silence: an unknown name lists the
files that could not be read (the likeliest to define it first), ``tasks list`` names them on
stderr, and a name two files define gets one warning naming both and the one used."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_tasks_errors import GOOD as ARC  # an ARC-Easy task, {name} to fill

from evalfleet.client.cli import main
from evalfleet.tasks import TaskManager, TaskNotFoundError

#: One file per way a task file cannot be read, and the phrase its error must hold.
BROKEN: dict[str, tuple[bytes, str]] = {
    "latin1": (b"task: caf\xe9\ndataset_path: x\n", "invalid YAML"),
    "binary": (bytes(range(256)) * 4, "invalid YAML"),
    "empty": (b"", "expected a mapping at top level"),
    "syntax": (b"task: syn\n  x: [\n", "invalid YAML at line 2"),
    "listed": (b"task: [listed, other]\ndataset_path: x\n",
               "key 'task' expected a task name (a string), got list"),
    "number": (b"task: 7\ndataset_path: x\n",
               "key 'task' expected a task name (a string), got int"),
}


@pytest.fixture()
def broken_folder(tmp_path: Path) -> Path:
    for stem, (data, _) in BROKEN.items():
        (tmp_path / f"{stem}.yaml").write_bytes(data)
    (tmp_path / "good.yaml").write_text(ARC.format(name="good"))
    return tmp_path


def test_every_unreadable_file_is_named_with_its_error(broken_folder, data_dir):
    """Before: files with a list or a number as their name were skipped without a word."""
    manager = TaskManager(include_paths=[broken_folder], data_dir=data_dir)
    assert manager.names().count("good") == 1
    named = {Path(str(b).split(":")[0]).stem: str(b) for b in manager.broken_files}
    assert set(named) == set(BROKEN)
    for stem, (_, phrase) in BROKEN.items():
        assert named[stem].startswith(str(broken_folder / f"{stem}.yaml"))
        assert phrase in named[stem] and "\n" not in named[stem]


def test_an_unknown_name_lists_the_broken_files_likeliest_first(broken_folder, data_dir):
    manager = TaskManager(include_paths=[broken_folder], data_dir=data_dir)
    for asked, first in [("listed", "listed"), ("other", "listed"), ("7", "number"),
                         ("syn", "syntax"), ("syntaxx", "syntax")]:
        with pytest.raises(TaskNotFoundError) as info:
            manager.load([asked])
        message = str(info.value)
        assert f"{len(BROKEN)} task file(s) could not be read: " \
               f"{broken_folder / first}.yaml: " in message, asked
        assert "and 1 more" in message  # five are shown, the count of the others follows


def test_the_cli_names_broken_files_for_an_unknown_task(broken_folder, data_dir, capsys):
    """Before: it printed only "unknown task 'other'"."""
    code = main(["tasks", "show", "other", "--include_path", str(broken_folder),
                 "--data_dir", str(data_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown task 'other'")
    assert f"could not be read: {broken_folder / 'listed.yaml'}: key 'task'" in err[0]


def test_tasks_list_names_broken_files_on_stderr(broken_folder, data_dir, capsys):
    assert main(["tasks", "list", "--json", "--include_path", str(broken_folder),
                 "--data_dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    assert '"name": "good"' in out and "could not be read" not in out
    lines = err.strip().splitlines()
    assert lines[0] == f"{len(BROKEN)} task file(s) could not be read and are not listed:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == \
        sorted(str(broken_folder / f"{stem}.yaml") for stem in BROKEN)


def test_a_name_two_files_define_warns_once_naming_both(tmp_path, data_dir):
    """Before: the second file was dropped with a debug line only."""
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (first, second, other):
        folder.mkdir()
    (first / "one.yaml").write_text(ARC.format(name="twice"))
    (first / "two.yaml").write_text(ARC.format(name="twice").replace("ARC-Easy", "ARC-Challenge"))
    (other / "twice.yaml").write_text(ARC.format(name="twice"))
    (second / "plain.yaml").write_text(ARC.format(name="plain"))
    with capture_logs() as logs:
        manager = TaskManager(include_paths=[first, second], data_dir=data_dir)
        task = manager.load(["twice"]).tasks["twice"]
        manager.load(["twice", "plain"])
        manager.list()
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warnings == [f"task 'twice' is defined by {first / 'one.yaml'} and by "
                        f"{first / 'two.yaml'}; using {first / 'one.yaml'}"]
    assert task.cfg.dataset_name == "ARC-Easy"  # the first file in a folder wins, as in lm-eval
    # A later --include_path overrides an earlier one (lm-eval's rule); the warning says so.
    with capture_logs() as logs:
        TaskManager(include_paths=[first, other], data_dir=data_dir).list()
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warnings == [f"task 'twice' is defined by {other / 'twice.yaml'} and by "
                        f"{first / 'one.yaml'}, {first / 'two.yaml'}; "
                        f"using {other / 'twice.yaml'}"]
