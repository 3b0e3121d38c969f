"""The code sandbox shows a program only its interpreter: host secrets, home, checkout and data
are not there, it holds no capability, its output leaves only as a short status; and a
coordinator refuses code tasks under a sandbox weaker than bubblewrap (FAILED_PRECONDITION)
unless its operator passed --allow_weak_sandbox (`serve coordinator` and `eval` alike)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import run_evaluation

from evalfleet.execution import (
    Isolation,
    WeakSandboxError,
    allow_code_execution,
    check_programs,
    check_sandbox,
    detect,
    policy,
    run_program,
    sandbox,
)
from evalfleet.execution import isolation as isolation_module
from evalfleet.execution.sandbox import STATUS_CHARS
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)"
ADD = "def add(a, b):\n    return a + b\n"


def _bubblewrap() -> None:
    if detect().method != "bwrap":
        pytest.skip(f"bubblewrap does not run here ({detect().describe()}); make install adds it")


def _run(programs: list[str]):
    """Each program (followed by a correct ``add``) against TEST: its result."""
    with allow_code_execution():
        results = check_programs([TEST] * len(programs), [[p + "\n" + ADD] for p in programs])
    return [r[0] for r in results]


def _first_file(folder: Path) -> Path:
    for root, _, files in os.walk(folder):
        if files:
            return Path(root) / files[0]
    raise AssertionError(f"no file under {folder}")


def test_a_program_reads_nothing_outside_its_interpreter_and_its_own_folder(data_dir):
    """Each probe passes only if it reads (or lists) what it targets: every host secret,
    the home directory, the checkout and the data fail with FileNotFoundError, while the same
    probes on the program's own file and the standard library pass."""
    _bubblewrap()
    home = Path.home()
    secret = home / f".evalfleet-secret-{uuid.uuid4().hex}"
    secret.write_text("do not read me")
    repo = Path(__file__).resolve().parents[1]
    try:
        hidden = ["/etc/shadow", "/etc/passwd", "/etc/hostname", str(secret),
                  str(repo / "README.md"), str(Path(__file__).resolve()),
                  str(repo / "execution" / "sandbox.py"), str(_first_file(data_dir)),
                  "/work/shared/notes/lm-eval-reference.md"]
        hidden = [p for p in hidden if Path(p).is_file()]  # each one readable on the host
        assert {"/etc/shadow", str(secret)} <= set(hidden)
        reads = [f"open({p!r}, 'rb').read()" for p in hidden]
        listings = [f"assert {secret.name!r} in os.listdir({str(home)!r})",
                    f"assert {Path(__file__).name!r} in os.listdir({str(repo / 'tests')!r})",
                    f"assert os.listdir({str(data_dir)!r})"]
        controls = ["open('program.py').read()", "open(os.__file__).read()",
                    "assert 'program.py' in os.listdir('.')"]
        probes = reads + listings + controls
        results = _run(["import os\n" + p for p in probes])
    finally:
        secret.unlink()
    for probe, result in zip(reads, results, strict=False):
        assert not result.passed and "FileNotFoundError" in result.status, (probe, result)
    for probe, result in zip(listings, results[len(reads):], strict=False):
        assert not result.passed, (probe, result)
        assert result.status.startswith(("failed: FileNotFoundError", "failed: AssertionError")), \
            (probe, result)
    assert [r.status for r in results[-len(controls):]] == ["passed"] * len(controls)


def test_a_program_holds_no_capability_and_sees_no_host_process():
    """As root, too: no capability (it could mount or load modules), only its own PIDs."""
    _bubblewrap()
    [result] = _run([
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "assert int(status['CapEff'], 16) == 0 and int(status['CapPrm'], 16) == 0, status\n"
        "pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert max(pids) < 10, pids\n"])
    assert result.passed, result.status


def test_a_forged_status_line_leaves_the_sandbox_short():
    """A program writing straight to its stdout can forge the runner's status line: what
    reaches the caller is still one short line."""
    result = run_program("import os\nos.write(1, b'failed: ' + b'A' * 5000 + b'\\x1b[2J\\n')\n"
                         "os._exit(3)")
    assert not result.passed
    assert result.status.startswith("failed: AAA") and len(result.status) <= STATUS_CHARS
    assert result.status.isprintable()


def _weak(method: str) -> Isolation:
    """A real weaker sandbox of this machine (``unshare``), or none at all."""
    if method == "unshare":
        prefix = isolation_module._unshare_prefix()
        if prefix is None:
            pytest.skip("unshare does not run here")
        return Isolation("unshare", prefix, detect().pids_cgroup, True, False,
                         "bwrap not found on PATH")
    return Isolation("none", (), detect().pids_cgroup, False, False, "bwrap not found on PATH")


@pytest.mark.parametrize("method", ["unshare", "none"])
def test_check_sandbox_names_the_sandbox_its_risks_and_the_ways_out(method):
    iso = _weak(method)
    with pytest.raises(WeakSandboxError) as err:
        check_sandbox(["mbpp", "humaneval"], allow_weak_sandbox=False, isolation=iso)
    message = str(err.value)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "\n" not in message
    for part in (f"method={method}", "humaneval, mbpp", "read and write every file",
                 "kill this user's processes, the coordinator included", "install bubblewrap",
                 "--allow_weak_sandbox"):
        assert part in message, part
    check_sandbox(["humaneval"], allow_weak_sandbox=True, isolation=iso)
    check_sandbox([], allow_weak_sandbox=False, isolation=iso)
    check_sandbox(["humaneval"], allow_weak_sandbox=False,
                  isolation=Isolation("bwrap", ("bwrap",), None, True, True))


@pytest.fixture()
def unshare_only(monkeypatch):
    """This process's sandbox is the real ``unshare`` fallback (as without bubblewrap); the
    isolation of each program run is recorded."""
    iso = _weak("unshare")
    used: list[str] = []
    run = sandbox.run_program

    def recording(program, limits=sandbox.DEFAULT_LIMITS, isolation=None):
        used.append((isolation or iso).method)
        return run(program, limits, isolation)

    monkeypatch.setattr(policy, "detect", lambda: iso)
    monkeypatch.setattr(sandbox, "detect", lambda: iso)
    monkeypatch.setattr(sandbox, "run_program", recording)
    return used


def _code_spec() -> cpb.EvaluationSpec:
    return cpb.EvaluationSpec(model="hf", tasks=["humaneval"], limit=1, bootstrap_iters=0,
                              confirm_run_unsafe_code=True, gen_kwargs="max_gen_toks=4")


def test_a_coordinator_refuses_code_tasks_under_a_weak_sandbox_unless_allowed(
        unshare_only, background_loop, tiny_worker, data_dir, tmp_path):
    """Real coordinators on loopback: FAILED_PRECONDITION by default; with the operator's
    --allow_weak_sandbox the job runs, its programs under unshare."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import SqliteJobStore

    for allow in (False, True):
        server, _ = background_loop.run(start_coordinator(
            workers=[tiny_worker.address], data_dir=data_dir, confirm_run_unsafe_code=True,
            store=SqliteJobStore(tmp_path / f"jobs-{allow}.db"),
            options=CoordinatorOptions(policy=AccessPolicy(allow_weak_sandbox=allow))))
        try:
            if not allow:
                with grpc.insecure_channel(server.address) as channel, \
                        pytest.raises(grpc.RpcError) as err:
                    cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
                        cpb.CreateEvaluationRequest(spec=_code_spec()), timeout=120)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                for part in ("humaneval", "method=unshare", "kill", "install bubblewrap",
                             "--allow_weak_sandbox"):
                    assert part in err.value.details(), part
                assert unshare_only == []
            else:
                final, _, results, _ = run_evaluation(server.address, _code_spec(),
                                                      timeout_s=300)
                assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final
                assert "pass@1,create_test" in results["results"]["humaneval"]
                assert unshare_only == ["unshare"]
        finally:
            background_loop.run(server.stop(0.5))


def test_serve_coordinator_and_eval_take_allow_weak_sandbox(unshare_only, capsys, data_dir,
                                                            tiny_model_dir, tmp_path):
    """`serve coordinator --allow_weak_sandbox` sets the coordinator's policy; `eval` (its own
    operator) refuses humaneval under unshare with the one-line reason before its model loads,
    and with --allow_weak_sandbox its checks let the job through (the embedded coordinator's
    policy is the one the coordinator test above runs a job under)."""
    from evalfleet.client.cli import build_parser, main
    from evalfleet.client.eval_command import _checked_tasks
    from evalfleet.client.serve import coordinator_options

    for flags, allowed in (([], False), (["--allow_weak_sandbox"], True)):
        args = build_parser().parse_args(["serve", "coordinator", *flags])
        assert coordinator_options(args).policy.allow_weak_sandbox is allowed

    command = ["eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
               "--tasks", "humaneval", "--limit", "1", "--data_dir", str(data_dir),
               "--gen_kwargs", "max_gen_toks=4", "--confirm_run_unsafe_code", "--no_progress",
               "--store", str(tmp_path / "jobs.db")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "method=unshare" in err and "--allow_weak_sandbox" in err
    assert "Traceback" not in err and "loading" not in err and "embedded coordinator" not in err
    args = build_parser().parse_args([*command, "--allow_weak_sandbox"])
    assert args.allow_weak_sandbox
    assert list(_checked_tasks(args, str(data_dir)).tasks) == ["humaneval"]
    assert unshare_only == []
