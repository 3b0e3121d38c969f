"""``local-completions`` against a real OpenAI-compatible server serving SmolLM2-135M.

The server (tests/servers/openai_compat.py) computes prompt logprobs with transformers and
answers with vLLM's response shapes. On arc_easy (0-shot; 50 documents in the acceptance
tier, 12 by default):

* evalfleet's local-completions gives the hf backend's per-sample loglikelihoods (within
  2e-4 + 1e-5·|ll|) and identical acc / acc_norm;
* lm-eval 0.4.13's own local-completions, against the same server, sends the same payloads
  (recorded by the server) and gets the same numbers.

One server for the module; everything runs through real gRPC workers and coordinators.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from conftest import ACCEPTANCE, openai_test_server, recorded_requests, run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb

pytestmark = pytest.mark.slow

TASK = "arc_easy"
#: the issue's 50 documents in the acceptance tier (`make test-acceptance`); 12 by default
LIMIT = 50 if ACCEPTANCE else 12


def _tolerance(ll: float) -> float:
    return 2e-4 + 1e-5 * abs(ll)


@pytest.fixture(scope="module")
def server(real_model_dir, tmp_path_factory):
    record = tmp_path_factory.mktemp("record") / "requests.jsonl"
    # --memo: lm-eval's run sends the payloads evalfleet's run sent, answered from memory
    srv = openai_test_server(real_model_dir, "--record", str(record), "--memo")
    srv.record = record
    yield srv
    srv.stop()


def _serve_and_run(background_loop, data_dir, backend, spec, model_args=None):
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import start_coordinator

    worker = background_loop.run(start_worker(backend, model_args=model_args))
    coordinator, _ = background_loop.run(start_coordinator(workers=[worker.address],
                                                           data_dir=data_dir))
    try:
        return worker, run_evaluation(coordinator.address, spec)
    finally:
        background_loop.run(coordinator.stop(0.5))
        background_loop.run(worker.stop(0.5))


def _spec(model: str) -> cpb.EvaluationSpec:
    return cpb.EvaluationSpec(model=model, tasks=[TASK], limit=LIMIT, num_fewshot=0,
                              log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def remote_run(background_loop, data_dir, server, real_model_dir):
    from evalfleet.inference.server import load_backend

    model_args = {"model": "smol", "base_url": server.base_url, "api_key": "dummy",
                  "tokenizer": str(real_model_dir), "probe_interval_s": 3600}
    backend = load_backend("local-completions", model_args)
    first = len(recorded_requests(server))
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import start_coordinator

    worker = background_loop.run(start_worker(backend, model_args=model_args))
    probe_requests = recorded_requests(server)[first:]
    coordinator, _ = background_loop.run(start_coordinator(workers=[worker.address],
                                                           data_dir=data_dir))
    try:
        mark = len(recorded_requests(server))
        final, events, results, samples = run_evaluation(coordinator.address,
                                                         _spec("local-completions"))
        payloads = recorded_requests(server)[mark:]
    finally:
        background_loop.run(coordinator.stop(0.5))
        background_loop.run(worker.stop(0.5))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return {"results": results, "samples": samples[TASK], "payloads": payloads,
            "probe_requests": probe_requests, "backend": backend}


@pytest.fixture(scope="module")
def hf_run(background_loop, data_dir, real_model_dir):
    from evalfleet.inference.server import load_backend

    model_args = {"pretrained": str(real_model_dir), "dtype": "float32", "device": "cpu"}
    backend = load_backend("hf", model_args, batch_size=8)
    _, (final, _, results, samples) = _serve_and_run(background_loop, data_dir, backend,
                                                     _spec("hf"), model_args)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return {"results": results, "samples": samples[TASK]}


@pytest.fixture(scope="module")
def lmeval_remote_run(remote_run, server, real_model_dir, lmeval_task_dir):
    """lm-eval's own local-completions against the same server (after evalfleet's run)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    mark = len(recorded_requests(server))
    out = simple_evaluate(
        model="local-completions",
        model_args=(f"model=smol,base_url={server.base_url}/completions,"
                    f"tokenizer={real_model_dir},tokenizer_backend=huggingface"),
        tasks=[TASK], limit=LIMIT, num_fewshot=0, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(lmeval_task_dir)))
    return {"samples": out["samples"][TASK], "results": out["results"][TASK],
            "payloads": recorded_requests(server)[mark:]}


def _lls(sample: dict) -> list[float]:
    return [float(r[0][0]) for r in sample["resps"]]


def test_the_probe_passes_on_an_honest_server(remote_run):
    info = remote_run["backend"].model_info()
    caps = info.capabilities
    assert caps.loglikelihood and caps.loglikelihood_rolling, caps.logprobs_unavailable_reason
    assert caps.probe is not None and caps.probe.passed
    names = [f.split(" ")[0] for f in caps.probe.findings]
    assert names == ["echo", "retokenize", "top-1", "likelihood"]
    # the probe asks exactly as loglikelihood requests are sent: token ids, echo, logprobs=1
    assert len(remote_run["probe_requests"]) == 2
    for request in remote_run["probe_requests"]:
        body = request["body"]
        assert request["path"] == "/v1/completions"
        assert body["echo"] is True and body["logprobs"] == 1 and body["max_tokens"] == 1
        assert isinstance(body["prompt"][0], list)


def test_local_completions_gives_the_hf_backends_loglikelihoods(remote_run, hf_run):
    remote = {s["doc_id"]: s for s in remote_run["samples"]}
    local = {s["doc_id"]: s for s in hf_run["samples"]}
    assert set(remote) == set(local) == set(range(LIMIT))
    worst = 0.0
    for doc_id, ref in local.items():
        mine = remote[doc_id]
        assert mine["arguments"] == ref["arguments"]
        for a, b in zip(_lls(mine), _lls(ref), strict=True):
            assert abs(a - b) <= _tolerance(b), (doc_id, a, b)
            worst = max(worst, abs(a - b))
        assert mine["acc"] == ref["acc"] and mine["acc_norm"] == ref["acc_norm"], doc_id
    for metric in ("acc,none", "acc_norm,none"):
        assert remote_run["results"]["results"][TASK][metric] == \
            hf_run["results"]["results"][TASK][metric]
    print(f"worst |ll(local-completions) - ll(hf)| = {worst:.2e}")


@pytest.mark.reference
def test_lmeval_local_completions_sends_the_same_payloads_and_gets_the_same_numbers(
        remote_run, lmeval_remote_run):
    ours = Counter(json.dumps(p["body"], sort_keys=True) for p in remote_run["payloads"])
    theirs = Counter(json.dumps(p["body"], sort_keys=True) for p in lmeval_remote_run["payloads"])
    assert sum(theirs.values()) > 0
    assert ours == theirs
    mine = {s["doc_id"]: s for s in remote_run["samples"]}
    for ref in lmeval_remote_run["samples"]:
        sample = mine[ref["doc_id"]]
        assert [float(r[0][0]) for r in ref["resps"]] == pytest.approx(_lls(sample), abs=1e-6)
        assert [bool(r[0][1]) for r in ref["resps"]] == [r[0][1] == "True"
                                                          for r in sample["resps"]]
        assert sample["acc"] == ref["acc"] and sample["acc_norm"] == ref["acc_norm"]
    for metric in ("acc,none", "acc_norm,none"):
        assert remote_run["results"]["results"][TASK][metric] == lmeval_remote_run["results"][
            metric]


def _set_shifted(server, shifted: bool) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/admin/mode",
                                     data=json.dumps({"shifted": shifted}).encode(),
                                     method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["shifted"] is shifted


def test_a_server_that_turns_bad_is_refused_when_the_next_job_is_created(
        server, real_model_dir, worker_and_coordinator):
    """The probe runs again (GetModelInfo's refresh) once the last one is probe_interval_s
    old: a server redeployed with shifted logprobs is caught before any work."""
    import grpc

    from evalfleet.inference.server import load_backend
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    model_args = {"model": "smol", "base_url": server.base_url, "api_key": "dummy",
                  "tokenizer": str(real_model_dir), "probe_interval_s": 0}
    backend = load_backend("local-completions", model_args)
    address = worker_and_coordinator(backend, model_args)
    assert backend.model_info().capabilities.loglikelihood  # passed at start
    # The coordinator has the worker's model info (READY) before the server turns bad: the
    # job's creation itself must fetch it again (this passed only by a race before).
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        deadline = time.monotonic() + 60
        while not [w for w in stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10).workers
                   if w.state == cpb.WORKER_STATE_READY]:
            assert time.monotonic() < deadline, "the worker never became READY"
            time.sleep(0.1)
    _set_shifted(server, True)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(
                    "local-completions")), timeout=300)
    finally:
        _set_shifted(server, False)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    assert "prompt logprobs are wrong or missing" in details
    assert "top-1 FAILED" in details or "likelihood FAILED" in details, details
    caps = backend.model_info().capabilities  # what GetModelInfo reports from now on
    assert not caps.loglikelihood and not caps.probe.passed
