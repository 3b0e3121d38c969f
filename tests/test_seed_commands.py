"""The user's guide's ``lm_eval`` commands (../shared/notes/user-guide-examples.md) with
``lm_eval`` replaced by ``evalfleet eval`` and the model by a local one.

What is run here, honestly: eight of the guide's twenty ``--model hf`` commands (one per distinct
flag combination; read from the guide itself; all twenty with the real SmolLM2 in the acceptance
tier, ``make test-acceptance``), with the **tiny** model (there: SmolLM2) and ``--limit 1`` (added
where the guide has no ``--limit``, and replacing its ``--limit 100`` in one command); outputs
go to a temp folder. The data mirror has no HellaSwag validation split in HF's schema, so the
hellaswag commands must end in the one-line data error that names the path searched. Commands
that lm-eval 0.4.13 itself refuses (``--log_samples`` without ``--output_path``) must give
evalfleet's one-line error, and so must what cannot run here (8-bit loading needs bitsandbytes
and a GPU; the code tasks humaneval/mbpp run generated code only with --confirm_run_unsafe_code,
which the guide does not pass, so they are refused as lm-eval refuses them; the guide's vllm
command needs vllm and a GPU, and its openai commands an OPENAI_API_KEY, one of them with a
model_arg lm-eval silently ignores, ``max_tokens``)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import ACCEPTANCE, DATA_DIR, REPO_ROOT

GUIDE = REPO_ROOT.parent / "shared" / "notes" / "user-guide-examples.md"


def guide_commands() -> list[tuple[str, list[str]]]:
    """``(section number, argv after lm_eval)`` for every lm_eval command in the guide's bash
    blocks, in order (backslash continuations joined)."""
    commands: list[tuple[str, list[str]]] = []
    section, in_bash, pending = "", False, ""
    for line in GUIDE.read_text().splitlines():
        stripped = line.strip()
        if line.startswith("## "):
            section = line[3:].split(".")[0]
        elif stripped.startswith("```"):
            in_bash = stripped == "```bash" and not in_bash
        elif in_bash:
            pending += stripped
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.startswith("lm_eval "):
                commands.append((section, shlex.split(pending)[1:]))
            pending = ""
    return commands


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def adapt(argv: list[str], model: Path, out: Path) -> list[str]:
    """The guide's argv for evalfleet here: local model, --limit 1, outputs under ``out``."""
    loop = {"$tasks": "mmlu,hellaswag,arc_easy"}  # section 30's shell loop variables
    argv = [loop.get(a, a) if "$(" not in a else "results/loop_model.json" for a in argv]
    args = _flag(argv, "--model_args")
    if args is not None:
        argv[argv.index("--model_args") + 1] = re.sub(r"pretrained=[^,]+", f"pretrained={model}",
                                                      args)
    if "--limit" in argv:
        argv[argv.index("--limit") + 1] = "1"
    else:
        argv += ["--limit", "1"]
    if "--output_path" in argv:
        i = argv.index("--output_path") + 1
        argv[i] = str(out / argv[i])
    return argv + ["--no_progress"]


def run_evalfleet_eval(argv: list[str]) -> tuple[int, str]:
    """``evalfleet eval ARGV`` in-process: (exit code, one-line error or '')."""
    from evalfleet.client.cli import build_parser
    from evalfleet.client.eval_command import run_eval
    from evalfleet.client.eval_config import apply_config_file
    from evalfleet.common.errors import EvalfleetError

    parser = build_parser()
    try:
        args = parser.parse_args(apply_config_file(parser, ["eval", *argv]))
        return asyncio.run(run_eval(args)), ""
    except EvalfleetError as exc:
        return 2, exc.message


COMMANDS = guide_commands()
HF = [(s, a) for s, a in COMMANDS if _flag(a, "--model") == "hf"]
#: One command per distinct flag combination (the suite's time budget): sections 4 (--device
#: cuda:0), 5 (load_in_8bit), 17 (gsm8k 5-shot generation; arc 25-shot),
#: 18 (humaneval), 20 (--limit, .json output path), 28 (--cache_requests), 29 (--log_samples
#: without --output_path, --verbosity).
DEFAULT_RUN = [HF[i] for i in (0, 2, 5, 6, 7, 9, 15, 16)]
#: The acceptance tier (`make test-acceptance`) runs all twenty with the real SmolLM2.
RUN = HF if ACCEPTANCE else DEFAULT_RUN


def _expected_error(argv: list[str]) -> str | None:
    if ("--log_samples" in argv or "--predict_only" in argv) and "--output_path" not in argv:
        return "Specify --output_path if providing --log_samples or --predict_only"
    if "load_in_8bit=True" in (_flag(argv, "--model_args") or ""):
        return "load_in_8bit"
    tasks = set((_flag(argv, "--tasks") or "").split(","))
    if {"humaneval", "mbpp"} & tasks and "--confirm_run_unsafe_code" not in argv:
        return "--confirm_run_unsafe_code"
    if "hellaswag" in tasks:  # the mirror has no HellaSwag validation split in HF's schema
        return "split 'validation' of task 'hellaswag' not found"
    return None


def _table_names(task: str) -> list[str]:
    """How the results table may name ``task``: its name, or its ``task_alias`` as lm-eval's
    table prints it (mmlu_anatomy is "anatomy")."""
    from evalfleet.tasks import TaskManager

    loaded = TaskManager().load([task]).tasks.get(task)
    alias = getattr(loaded, "alias", None)
    return [task, alias] if alias else [task]


def test_the_guide_has_the_commands_we_expect():
    assert len(COMMANDS) == 30 and len(HF) == 20
    assert [s for s, _ in DEFAULT_RUN] == ["4", "5", "17", "17", "18", "20", "28", "29"]
    assert {_flag(a, "--model") for _, a in COMMANDS} == {
        "hf", "vllm", "openai", "anthropic", "openai-chat-completions", "openai-completions"}


@pytest.mark.acceptance
@pytest.mark.parametrize("section,argv", RUN, ids=[f"s{s}-{i}" for i, (s, _) in enumerate(RUN)])
def test_guide_hf_command_runs(section, argv, request, tmp_path, monkeypatch, capsys):
    model_dir = request.getfixturevalue("real_model_dir" if ACCEPTANCE else "tiny_model_dir")
    monkeypatch.setenv("EVALFLEET_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("EVALFLEET_STRICT_SINKS", "1")
    adapted = adapt(argv, model_dir, tmp_path)
    code, error = run_evalfleet_eval(adapted)
    expected = _expected_error(adapted)  # the adapted argv: shell loop variables filled in
    if expected is not None:
        assert code == 2 and expected in error, (code, error)
        return
    assert code == 0, error
    table = capsys.readouterr().out
    tasks = (_flag(argv, "--tasks") or "").split(",")
    for task in tasks:
        names = "|".join(re.escape(n) for n in _table_names(task))
        assert re.search(rf"^\|\s*(?:{names})\s*\|", table, re.M), (task, table[:2000])
    output = _flag(argv, "--output_path")
    if output is not None:
        written = list((tmp_path / output).parent.rglob("*.json"))
        assert written, f"nothing written for --output_path {output}"
        doc = json.loads(max(written, key=lambda p: p.stat().st_mtime).read_text())
        assert doc["config"]["limit"] == 1.0


#: Why each of the first three non-hf commands cannot run here (no GPU, no vllm, no API key).
OTHER_BACKEND_ERRORS = [
    ("vllm", ("pip install 'evalfleet[vllm]'", "unknown task")),
    # mmlu,hellaswag: the job's data is checked first (before any worker starts), and the
    # mirror lacks hellaswag's validation split (the key's message: test_backend_remote_prompts)
    ("openai", ("split 'validation' of task 'hellaswag' not found",)),
    ("openai", ("max_tokens: not an argument of the openai-chat-completions backend; did you "
                "mean max_gen_toks?",)),
]


@pytest.mark.parametrize("index", range(3))
def test_guide_commands_for_other_backends_fail_in_one_line(index, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, argv = [(s, a) for s, a in COMMANDS if _flag(a, "--model") != "hf"][index]
    model, reasons = OTHER_BACKEND_ERRORS[index]
    assert _flag(argv, "--model") == model
    code, error = run_evalfleet_eval(argv + ["--no_progress"])
    assert code == 2 and "\n" not in error, (code, error)
    assert any(reason in error for reason in reasons), error
