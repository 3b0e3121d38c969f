"""The coordinator and a worker as real gRPC servers on loopback, driven by a gRPC client."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}


@pytest.fixture()
def eval_stub(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield cpb_grpc.EvaluationServiceStub(channel)


def _run(stub, spec: cpb.EvaluationSpec) -> tuple[cpb.Evaluation, list[cpb.EvaluationEvent]]:
    evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120)
    events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                       timeout=600))
    return stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=10), events


@pytest.mark.parametrize("service", ["", "evalfleet.v1.EvaluationService"])
def test_coordinator_health_serving(coordinator, service):
    with grpc.insecure_channel(coordinator.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_worker_health_and_unknown_service(tiny_worker):
    with grpc.insecure_channel(tiny_worker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        ok = stub.Check(health_pb2.HealthCheckRequest(
            service="evalfleet.v1.InferenceService"), timeout=5)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("fixture_name,expected", [
    ("coordinator", "evalfleet.v1.EvaluationService"),
    ("tiny_worker", "evalfleet.v1.InferenceService"),
])
def test_reflection_lists_services(request, fixture_name, expected):
    server = request.getfixturevalue(fixture_name)
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert expected in names
    assert "grpc.health.v1.Health" in names


def test_worker_scores_batches(tiny_worker):
    with grpc.insecure_channel(tiny_worker.address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        info = stub.GetModelInfo(ipb.GetModelInfoRequest(), timeout=10)
        assert info.backend == "hf"
        assert info.fingerprint.startswith("sha256:") and len(info.fingerprint) == 71
        assert info.capabilities.loglikelihood and info.capabilities.generate_until
        assert info.capabilities.same_context  # the coordinator sends a context once per doc
        response = stub.Loglikelihood(ipb.LoglikelihoodRequest(items=[
            ipb.LoglikelihoodItem(request_id="a", context="The capital of France is",
                                  continuation=" Paris"),
            ipb.LoglikelihoodItem(request_id="b", context="Question: 2+2?\nAnswer:",
                                  continuation=" four apples"),
        ]), timeout=60)
    assert [r.request_id for r in response.results] == ["a", "b"]
    assert len(response.results[1].logprobs) >= 2
    assert all(lp <= 0.0 for r in response.results for lp in r.logprobs)
    assert len(response.results[0].greedy) == len(response.results[0].logprobs)
    assert response.cost.positions_computed > 0


def test_worker_reads_same_context_as_the_previous_items_context(tiny_worker):
    """A choice sent with ``same_context`` scores as the same choice sent whole; the flag on
    the first item is refused with INVALID_ARGUMENT naming the field."""
    context = "Question: 2+2?\nAnswer:"
    whole = [ipb.LoglikelihoodItem(request_id=c, context=context, continuation=c)
             for c in (" four", " five")]
    short = [whole[0], ipb.LoglikelihoodItem(request_id=" five", continuation=" five",
                                             same_context=True)]
    with grpc.insecure_channel(tiny_worker.address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        a = stub.Loglikelihood(ipb.LoglikelihoodRequest(items=whole), timeout=60)
        b = stub.Loglikelihood(ipb.LoglikelihoodRequest(items=short), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            stub.Loglikelihood(ipb.LoglikelihoodRequest(items=short[1:]), timeout=60)
    assert [r.request_id for r in b.results] == [" four", " five"]
    assert [lp for r in a.results for lp in r.logprobs] == pytest.approx(
        [lp for r in b.results for lp in r.logprobs], abs=1e-5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[0].same_context" in err.value.details()


@pytest.fixture()
def fresh_stub(background_loop, tiny_worker, data_dir):
    """A coordinator with an empty store, so that every answer is computed by the worker."""
    from evalfleet.server.service import start_coordinator

    server, _ = background_loop.run(start_coordinator(workers=[tiny_worker.address],
                                                      data_dir=data_dir))
    with grpc.insecure_channel(server.address) as channel:
        yield cpb_grpc.EvaluationServiceStub(channel)
    background_loop.run(server.stop(0.5))


def test_evaluation_end_to_end(fresh_stub):
    eval_stub = fresh_stub
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy", "piqa"], limit=5,
                              log_samples=True, bootstrap_iters=0)
    evaluation, events = _run(eval_stub, spec)
    assert evaluation.state == cpb.EVALUATION_STATE_SUCCEEDED, evaluation.error
    assert events[-1].state == cpb.EVALUATION_STATE_SUCCEEDED
    final = {p.task: (p.done, p.total) for p in events[-1].progress}
    assert final == {"arc_easy": (final["arc_easy"][1], final["arc_easy"][1]),
                     "piqa": (10, 10)}
    results = eval_stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=10)
    tasks = {t.task: t for t in results.tasks}
    assert set(tasks) == {"arc_easy", "piqa"}
    for task in tasks.values():
        metrics = {m.metric for m in task.metrics}
        assert {"acc", "acc_norm"} <= metrics
        assert task.sample_len == 5
    doc = json.loads(results.results_json)
    assert doc["results"]["piqa"]["sample_len"] == 5
    assert 0.0 <= doc["results"]["piqa"]["acc,none"] <= 1.0
    assert doc["n-samples"]["arc_easy"] == {"original": 2376, "effective": 5}
    assert "|arc_easy|" in results.table.replace(" ", "")
    assert results.positions_computed > 0
    samples = list(eval_stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation.id),
                                           timeout=30))
    assert len(samples) == 10
    record = json.loads(samples[0].json)
    assert record["doc_id"] == 0
    assert set(record) >= {"doc", "target", "arguments", "resps", "filtered_resps", "doc_hash",
                           "prompt_hash", "target_hash", "acc", "acc_norm"}
    assert all(math.isfinite(float(r[0][0])) for r in record["resps"])


def test_samples_choose_the_documents(fresh_stub, data_dir):
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], log_samples=True,
                              bootstrap_iters=0,
                              samples={"arc_easy": cpb.DocIndices(indices=[7, 2])})
    evaluation, _ = _run(fresh_stub, spec)
    assert evaluation.state == cpb.EVALUATION_STATE_SUCCEEDED, evaluation.error
    results = fresh_stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=10)
    doc = json.loads(results.results_json)
    assert doc["n-samples"]["arc_easy"] == {"original": 2376, "effective": 2}
    records = [json.loads(s.json) for s in fresh_stub.StreamSamples(
        cpb.StreamSamplesRequest(id=evaluation.id), timeout=30)]
    # documents in split order (2, then 7), each record's doc_id the index given at its rank,
    # as lm-eval 0.4.13 writes them (doc_id_true = indices[doc_id]: [7, 2] for this list)
    assert [r["doc_id"] for r in records] == [7, 2]
    lines = (data_dir / "allenai/ai2_arc/ARC-Easy/test.jsonl").read_text().splitlines()
    assert [r["doc"]["id"] for r in records] == [json.loads(lines[i])["id"] for i in (2, 7)]


def test_second_job_reuses_stored_answers(fresh_stub):
    eval_stub = fresh_stub
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_challenge"], limit=2, bootstrap_iters=0)
    first, first_events = _run(eval_stub, spec)
    assert any(f"0 answers from the store, {first.unique_requests} to compute" in e.message
               for e in first_events)
    second, events = _run(eval_stub, spec)
    assert second.state == cpb.EVALUATION_STATE_SUCCEEDED
    assert any(f"{first.unique_requests} answers from the store, 0 to compute" in e.message
               for e in events)
    r1 = eval_stub.GetResults(cpb.GetResultsRequest(id=first.id), timeout=10)
    r2 = eval_stub.GetResults(cpb.GetResultsRequest(id=second.id), timeout=10)
    assert [m.value for m in r1.tasks[0].metrics] == [m.value for m in r2.tasks[0].metrics]
    assert r2.positions_computed == 0


@pytest.mark.parametrize("spec,code,needle", [
    (cpb.EvaluationSpec(tasks=["arc_esay"]), grpc.StatusCode.NOT_FOUND, "arc_easy"),
    (cpb.EvaluationSpec(tasks=["piqa"], model_args="pretrained"),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.model_args"),
    (cpb.EvaluationSpec(tasks=[]), grpc.StatusCode.INVALID_ARGUMENT, "spec.tasks"),
    (cpb.EvaluationSpec(tasks=["piqa"], batch_size="big"), grpc.StatusCode.INVALID_ARGUMENT,
     "spec.batch_size"),
    (cpb.EvaluationSpec(tasks=["piqa"], worker_addresses=["127.0.0.1:1"]),
     grpc.StatusCode.PERMISSION_DENIED, "--allow_spec_workers"),
    (cpb.EvaluationSpec(tasks=["piqa"], limit=-1), grpc.StatusCode.INVALID_ARGUMENT,
     "spec.limit"),
    (cpb.EvaluationSpec(tasks=["piqa"], limit=2, samples={"piqa": cpb.DocIndices(indices=[1])}),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.samples: cannot be combined with spec.limit"),
    (cpb.EvaluationSpec(tasks=["piqa"], samples={"boolq": cpb.DocIndices(indices=[1])}),
     grpc.StatusCode.INVALID_ARGUMENT, "'boolq' not among the job's tasks"),
    (cpb.EvaluationSpec(tasks=["piqa"], samples={"piqa": cpb.DocIndices(indices=[5, 99999])}),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.samples['piqa']: task 'piqa': samples [99999]"),
    (cpb.EvaluationSpec(tasks=["piqa"], samples={"piqa": cpb.DocIndices(indices=[-1])}),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.samples['piqa']: give one or more"),
])
def test_bad_specs_get_clear_statuses(eval_stub, spec, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        eval_stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=60)
    assert err.value.code() == code
    assert needle in err.value.details()
    assert "Traceback" not in err.value.details()


def test_missing_data_names_the_path(background_loop, tiny_worker, tmp_path):
    from evalfleet.server.service import start_coordinator

    server, _ = background_loop.run(start_coordinator(workers=[tiny_worker.address],
                                                      data_dir=tmp_path))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateEvaluation(cpb.CreateEvaluationRequest(
                    spec=cpb.EvaluationSpec(tasks=["piqa"], limit=2)), timeout=60)
    finally:
        background_loop.run(server.stop(0.5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert str(tmp_path) in err.value.details()


def test_unknown_evaluation_and_results_before_success(eval_stub):
    with pytest.raises(grpc.RpcError) as err:
        eval_stub.GetEvaluation(cpb.GetEvaluationRequest(id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        eval_stub.GetResults(cpb.GetResultsRequest(id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_evaluations_and_tasks(eval_stub):
    listed = eval_stub.ListEvaluations(cpb.ListEvaluationsRequest(), timeout=10)
    assert all(e.id for e in listed.evaluations)
    tasks = eval_stub.ListTasks(cpb.ListTasksRequest(), timeout=60)
    by_name = {t.name: t for t in tasks.tasks}
    assert by_name["arc_easy"].data_available
    assert by_name["arc_easy"].dataset_path == "allenai/ai2_arc"


def test_interrupted_job_resumes_from_the_store(background_loop, tiny_worker, data_dir,
                                                tmp_path):
    """A job left RUNNING by a coordinator that died is resumed by the next one, reusing
    every answer already stored and computing only the rest."""
    import time as _time

    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import JobRecord, SqliteJobStore

    db = tmp_path / "jobs.db"
    first, _ = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], store=SqliteJobStore(db), data_dir=data_dir))
    with grpc.insecure_channel(first.address) as channel:
        partial, _ = _run(cpb_grpc.EvaluationServiceStub(channel), cpb.EvaluationSpec(
            tasks=["boolq"], limit=2, bootstrap_iters=0))
    assert partial.state == cpb.EVALUATION_STATE_SUCCEEDED
    background_loop.run(first.stop(0.5))

    spec = cpb.EvaluationSpec(model="hf", tasks=["boolq"], limit=5, bootstrap_iters=0)
    store = SqliteJobStore(db)
    now = _time.time()
    background_loop.run(store.put_job(JobRecord("interrupted", spec.SerializeToString(),
                                                cpb.EVALUATION_STATE_RUNNING, "", now, now)))
    second, runner = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], store=store, data_dir=data_dir))
    try:
        # Nobody holds it (a dead coordinator's lease ran out): the claim takes it over.
        assert background_loop.run(runner.claim_once()) == ["interrupted"]
        with grpc.insecure_channel(second.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id="interrupted"),
                                               timeout=300))
            results = stub.GetResults(cpb.GetResultsRequest(id="interrupted"), timeout=10)
    finally:
        background_loop.run(second.stop(0.5))
    assert events[-1].state == cpb.EVALUATION_STATE_SUCCEEDED
    assert any("4 answers from the store, 6 to compute" in e.message for e in events)
    assert results.tasks[0].sample_len == 5


def test_two_workers_give_the_same_results_as_one(background_loop, tiny_model_dir, data_dir,
                                                  eval_stub):
    """Prompts (and few-shot draws) are built centrally: the worker count changes nothing."""
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator

    model_args = {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"}
    backend = load_backend("hf", model_args, batch_size=4)
    workers = [background_loop.run(start_worker(backend, model_args=model_args))
               for _ in range(2)]
    # Batches of 2 requests (a document's 4-5 choices share their prompt and stretch a batch
    # to at most 8), so the job's batches spread over both workers.
    server, runner = background_loop.run(start_coordinator(
        workers=[w.address for w in workers], data_dir=data_dir, batch_items=2))
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_challenge"], limit=6, num_fewshot=2,
                              bootstrap_iters=0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            two, events = _run(stub, spec)
            two_results = stub.GetResults(cpb.GetResultsRequest(id=two.id), timeout=10)
    finally:
        background_loop.run(server.stop(0.5))
        for w in workers:
            background_loop.run(w.stop(0.5))
    one, _ = _run(eval_stub, spec)
    one_results = eval_stub.GetResults(cpb.GetResultsRequest(id=one.id), timeout=10)
    assert two.state == one.state == cpb.EVALUATION_STATE_SUCCEEDED
    for worker in workers:
        # Progress events are coalesced: "N batches (M requests) done on A, B".
        assert any("done on " in e.message and worker.address in e.message.split("done on ")[1]
                   for e in events)
    assert _metric_values(two_results) == _metric_values(one_results)


def _metric_values(results: cpb.EvaluationResults) -> list[tuple[str, float]]:
    return [(m.metric, m.value) for t in results.tasks for m in t.metrics]


def test_coordinators_on_one_postgres_store(background_loop, tiny_worker, data_dir,
                                            postgres_server):
    """The runner on PostgreSQL: a job runs to its results and samples; a second coordinator on
    the same database answers the same job from the answers the first one stored."""
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import PostgresJobStore

    url = postgres_server.create_database()
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_challenge"], limit=2, bootstrap_iters=0,
                              log_samples=True)
    runs = []
    for _ in range(2):
        store = PostgresJobStore(url)
        server, runner = background_loop.run(start_coordinator(
            workers=[tiny_worker.address], store=store, data_dir=data_dir))
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = cpb_grpc.EvaluationServiceStub(channel)
                evaluation, events = _run(stub, spec)
                results = stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=10)
                samples = list(stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation.id),
                                                  timeout=30))
            record = background_loop.run(store.get_job(evaluation.id))
        finally:
            background_loop.run(server.stop(0.5))
            background_loop.run(store.close())
        assert evaluation.state == cpb.EVALUATION_STATE_SUCCEEDED, evaluation.error
        assert record.owner == runner.owner and record.lease_until == 0
        runs.append((evaluation, events, results, samples))
    (first, first_events, r1, s1), (_, events, r2, s2) = runs
    n = first.unique_requests
    assert any(f"0 answers from the store, {n} to compute" in e.message for e in first_events)
    assert any(f"{n} answers from the store, 0 to compute" in e.message for e in events)
    assert r1.positions_computed > 0 and r2.positions_computed == 0
    assert _metric_values(r1) == _metric_values(r2)
    assert len(s1) == len(s2) == 2
