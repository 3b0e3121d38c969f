"""lm_eval's flags in ``evalfleet eval``: the README's parity table against lm-eval 0.4.13's own
argument parser, and each flag's meaning (parsing in-process; one embedded run on the tiny model
checks --predict_only, --write_out, --output_path x.json, --cache_requests, --use_cache,
--max_batch_size, --trust_remote_code and --verbosity against what lm-eval writes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO_ROOT

from evalfleet.client.cli import UNSUPPORTED_FLAGS, build_parser
from evalfleet.client.eval_command import (
    LIST_COMMANDS,
    build_spec,
    check_flags,
    print_task_listing,
)
from evalfleet.client.eval_config import apply_config_file
from evalfleet.common.errors import InvalidArgumentError

ROW = re.compile(r"^\| (`--[^|]+) \| (yes|no) \|")


def _lm_eval_run_flags() -> dict[str, list[str]]:
    """lm-eval 0.4.13's ``run`` flags: long name -> all option strings."""
    from lm_eval._cli.harness import HarnessCLI

    run = HarnessCLI()._subparsers.choices["run"]
    return {next(o for o in a.option_strings if o.startswith("--")): sorted(a.option_strings)
            for a in run._actions if a.option_strings and a.dest != "help"}


def _parity_table() -> dict[str, tuple[list[str], bool]]:
    rows = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            options = sorted(re.findall(r"`(-[^`]+)`", match.group(1)))
            long = next(o for o in options if o.startswith("--"))
            rows[long] = (options, match.group(2) == "yes")
    return rows


def _eval_options() -> dict[str, set[str]]:
    parser = build_parser()
    eval_parser = next(a for a in parser._actions if hasattr(a, "choices")
                       and isinstance(a.choices, dict)).choices["eval"]
    return {o for a in eval_parser._actions for o in a.option_strings}


def _parse(*argv: str):
    parser = build_parser()
    args = parser.parse_args(apply_config_file(parser, ["eval", *argv]))
    return args


def test_parity_table_lists_every_lm_eval_flag_with_its_aliases():
    theirs = _lm_eval_run_flags()
    table = _parity_table()
    assert set(table) == set(theirs), set(table) ^ set(theirs)
    ours = _eval_options()
    for flag, (options, supported) in table.items():
        assert options == theirs[flag], flag
        if supported:
            assert set(options) <= ours, flag
        else:
            assert flag in UNSUPPORTED_FLAGS, flag


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED_FLAGS))
def test_unsupported_flags_give_one_clear_error(flag):
    args = _parse("--tasks", "arc_easy", flag, "x=1")
    with pytest.raises(InvalidArgumentError, match=f"{flag}: not supported by evalfleet"):
        check_flags(args)


def test_nargs_plus_flags_take_space_separated_values_like_lm_eval():
    args = _parse("--tasks", "arc_easy", "piqa,hellaswag", "--model_args", "pretrained=m",
                  "dtype=float32", "--gen_kwargs", "temperature=0", "max_gen_toks=5",
                  "--metadata", "a=1", "--wandb_args", "project=p", "name=n")
    spec = build_spec(args)
    assert list(spec.tasks) == ["arc_easy", "piqa", "hellaswag"]
    assert spec.model_args == "pretrained=m,dtype=float32"
    assert spec.gen_kwargs == "temperature=0,max_gen_toks=5"
    assert args.wandb_args == "project=p,name=n"


def test_cache_requests_bare_flag_means_true_and_values_are_checked():
    assert _parse("--tasks", "x", "--cache_requests").cache_requests == "true"
    assert build_spec(_parse("--tasks", "x", "--cache_requests", "refresh")).cache_requests \
        == "refresh"
    with pytest.raises(SystemExit):
        _parse("--tasks", "x", "--cache_requests", "sometimes")


def test_seed_accepts_three_values_and_none_like_lm_eval():
    seeds = build_spec(_parse("--tasks", "x", "--seed", "1,None,3")).seeds
    assert seeds.random_seed == 1 and not seeds.HasField("numpy_seed")
    assert seeds.torch_seed == 3 and seeds.fewshot_seed == 1234


def test_predict_only_implies_log_samples_and_needs_output_path():
    with pytest.raises(InvalidArgumentError, match="--output_path"):
        build_spec(_parse("--tasks", "x", "--predict_only"))
    spec = build_spec(_parse("--tasks", "x", "-x", "-o", "out"))
    assert spec.predict_only and spec.log_samples


def test_chat_template_flags_follow_lm_eval():
    from evalfleet.server.spec import parse_spec

    spec = build_spec(_parse("--tasks", "x", "--apply_chat_template"))
    assert spec.apply_chat_template and not spec.HasField("fewshot_as_multiturn")
    assert parse_spec(spec).fewshot_as_multiturn is True
    spec = build_spec(_parse("--tasks", "x", "--apply_chat_template=chatml",
                             "--fewshot_as_multiturn", "false"))
    assert spec.chat_template_name == "chatml" and not spec.fewshot_as_multiturn
    with pytest.raises(InvalidArgumentError, match="apply_chat_template"):
        parse_spec(build_spec(_parse("--tasks", "x", "--fewshot_as_multiturn")))


def test_trust_remote_code_goes_into_model_args():
    spec = build_spec(_parse("--tasks", "x", "--model_args", "pretrained=m",
                             "--trust_remote_code"))
    assert spec.model_args == "pretrained=m,trust_remote_code=True"


def test_use_cache_is_for_embedded_runs():
    with pytest.raises(InvalidArgumentError, match="--use_cache"):
        check_flags(_parse("--tasks", "x", "--use_cache", "c.db", "--coordinator", "h:1"))


def test_log_level_and_verbosity_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["--log_level", "INFO", "tasks", "list"]).log_level == "INFO"
    assert parser.parse_args(["tasks", "list", "--log_level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["eval", "--tasks", "x", "--log_level", "ERROR"]).log_level \
        == "ERROR"
    assert parser.parse_args(["eval", "--tasks", "x", "-v", "debug"]).verbosity == "DEBUG"


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(textwrap.dedent("""\
        model: hf
        model_args: {pretrained: models/smollm2-135m, dtype: float32}
        tasks: [arc_easy, piqa]
        num_fewshot: 3
        limit: 5
        seed: [1, 2, 3, 4]
    """))
    spec = build_spec(_parse("--config", str(config), "--num_fewshot", "0"))
    assert list(spec.tasks) == ["arc_easy", "piqa"] and spec.limit == 5
    assert json.loads(spec.model_args) == {"pretrained": "models/smollm2-135m",
                                           "dtype": "float32"}
    assert spec.num_fewshot == 0 and spec.seeds.fewshot_seed == 4
    spec = build_spec(_parse("--config", str(config), "--model_args", "pretrained=other"))
    assert spec.model_args == "pretrained=other"
    config.write_text("taskz: [arc_easy]\n")
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        _parse("--config", str(config))


@pytest.mark.parametrize("command,headers", [
    ("list", ["|Group", "|Tag", "|Task"]),
    ("list_groups", ["|Group"]),
    ("list_tags", ["|Tag"]),
    ("list_subtasks", ["|Task"]),
])
def test_tasks_list_commands_print_lm_eval_tables(command, headers, capsys):
    args = _parse("--tasks", command)
    assert args.tasks in LIST_COMMANDS
    print_task_listing(args, str(DATA_DIR))
    out = capsys.readouterr().out
    found = [h for h in ("|Group", "|Tag", "|Task")
             if re.search(rf"^\|\s*{h[1:]}\s*\|", out, re.M)]
    assert found == headers
    if "|Task" in headers:
        assert re.search(r"^\|arc_easy\s*\|tasks/builtin/arc/arc_easy.yaml\s*\|"
                         r"multiple_choice\s*\|$", out, re.M)
    if "|Group" in headers:
        assert re.search(r"^\|mmlu\s*\|tasks/builtin/mmlu/_mmlu.yaml\s*\|$", out, re.M)


@pytest.fixture(scope="module")
def lm_eval_predict_only(lmeval_task_dir, tiny_model_dir, tmp_path_factory):
    """lm-eval 0.4.13 itself: --predict_only --output_path x.json on the tiny model."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    out = tmp_path_factory.mktemp("lmeval") / "po.json"
    tracker = EvaluationTracker(output_path=str(out))
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32",
        tasks=["arc_easy", "gsm8k"], limit=2, device="cpu", predict_only=True,
        gen_kwargs="max_gen_toks=4", evaluation_tracker=tracker,
        task_manager=TaskManager(include_path=str(lmeval_task_dir), include_defaults=False))
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return out.parent


@pytest.fixture(scope="module")
def evalfleet_predict_only(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalfleet")
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "EVALFLEET_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model", "hf", "--model_args",
         f"pretrained={tiny_model_dir}", "dtype=float32", "--tasks", "arc_easy,gsm8k",
         "--limit", "2", "--predict_only", "--output_path", str(out / "po.json"), "--write_out",
         "--gen_kwargs", "max_gen_toks=4", "--cache_requests", "--use_cache",
         str(out / "answers.db"), "--batch_size", "auto", "--max_batch_size", "4",
         "--trust_remote_code", "--device", "cuda:0", "--verbosity", "INFO", "--no_progress"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return out, result, cache


def _files(folder: Path) -> dict[str, Path]:
    """File kind ('results' or 'samples_<task>') -> path, with the date id taken out."""
    out = {}
    for path in folder.iterdir():
        if path.suffix in (".json", ".jsonl") and "_20" in path.name:
            kind = re.sub(r"_\d{4}-\d{2}-\d{2}T[\d.-]+\.jsonl?$", "", path.name)
            out[kind] = path
    return out


@pytest.mark.reference
def test_predict_only_and_json_output_path_match_lm_eval(lm_eval_predict_only,
                                                         evalfleet_predict_only):
    out, _, _ = evalfleet_predict_only
    theirs, ours = _files(lm_eval_predict_only), _files(out)
    assert set(ours) == set(theirs) == {"po", "samples_arc_easy", "samples_gsm8k"}
    date = lambda p: re.search(r"\d{4}-\d{2}-\d{2}T[\d.-]+(?=\.json)", p.name).group()  # noqa
    assert len({date(p) for p in ours.values()}) == 1
    a, b = json.loads(ours["po"].read_text()), json.loads(theirs["po"].read_text())
    assert a["results"] == b["results"]
    assert a["n-samples"] == b["n-samples"] and a["higher_is_better"] == b["higher_is_better"]
    for task in ("arc_easy", "gsm8k"):
        assert a["configs"][task]["metric_list"] == b["configs"][task]["metric_list"]
        assert a["configs"][task]["process_results"] == b["configs"][task]["process_results"]
        mine = [json.loads(x) for x in ours[f"samples_{task}"].read_text().splitlines()]
        ref = [json.loads(x) for x in theirs[f"samples_{task}"].read_text().splitlines()]
        assert [(r["doc_id"], r["filter"], r["metrics"], r.get("bypass", "-")) for r in mine] \
            == [(r["doc_id"], r["filter"], r["metrics"], r.get("bypass", "-")) for r in ref]
    assert a["config"]["use_cache"] == str(out / "answers.db")
    assert a["config"]["model_args"]["trust_remote_code"] is True


def test_write_out_prints_document_zero_as_lm_eval(evalfleet_predict_only, lmeval_task_dir):
    _, result, _ = evalfleet_predict_only
    err = result.stderr
    assert ("Task: ConfigurableTask(task_name=arc_easy,output_type=multiple_choice,"
            "num_fewshot=0,num_samples=2376); document 0; context prompt (starting on next "
            "line):    \nQuestion: Which statement best explains why photosynthesis is the "
            "foundation of most food webs?\nAnswer:\n(end of prompt on previous line)\ntarget "
            "string or answer choice index (starting on next line):\n0\n(end of target on "
            "previous line)") in err
    assert "Request: Instance(request_type='loglikelihood', doc={'id': 'Mercury_417466'" in err
    assert "metadata=('arc_easy', 0, 1), resps=[], filtered_resps={}" in err
    assert "Task: ConfigurableTask(task_name=gsm8k,output_type=generate_until,num_fewshot=5" \
        in err
    assert "--device cuda:0 is not available here; using cpu" in err


def test_use_cache_keeps_answers_and_cache_requests_keeps_requests(evalfleet_predict_only):
    import sqlite3

    out, result, cache = evalfleet_predict_only
    with sqlite3.connect(out / "answers.db") as db:
        answers = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert answers == 2 * 4 + 2  # arc_easy: 4 choices per doc; gsm8k: one generation per doc
    cached = sorted(p.name.split("-")[0] for p in (cache / "requests").glob("*.pkl"))
    assert cached == ["arc_easy", "gsm8k"]
    assert '"event": "job_created"' in result.stderr or "job_created" in result.stderr
