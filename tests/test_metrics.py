"""Prometheus metrics (``serve coordinator|worker --metrics_port``): every name follows
Prometheus' conventions; a job on two real workers of the tiny model is counted on the
coordinator and on the workers, served over HTTP in the text format; failed batches, retries
and request errors are counted by reason (simulated workers); device memory is reported for a
CUDA device only; the flag serves a real ``evalfleet serve coordinator`` and a busy port is a
one-line error. (A real Prometheus server scrapes them in test_metrics_prometheus.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import types
import urllib.request
from contextlib import contextmanager

import grpc
import pytest
from conftest import REPO_ROOT, ServerProcess, free_port

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc

EVALFLEET = str(REPO_ROOT / ".venv" / "bin" / "evalfleet")
JOB = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=8, bootstrap_iters=0)
#: Every label a metric may carry: each takes only a few known values.
BOUNDED_LABELS = {"state", "kind", "reason", "op", "status", "device", "le"}


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed: sample name -> {sorted label items: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value; with no labels given, the sum over all of the name's samples."""
    series = samples.get(name, {})
    if not labels:
        return sum(series.values())
    return series[tuple(sorted(labels.items()))]


def _args(service: str, port: int):
    from evalfleet.client.cli import build_parser

    return build_parser().parse_args(["serve", service, "--metrics_port", str(port)])


@contextmanager
def metrics_fleet(background_loop, tiny_model_dir, data_dir, store_path, n_workers: int = 2,
                  metrics_ports: list[int] | None = None):
    """``n_workers`` tiny-model workers and a coordinator on loopback, each with its metrics
    served by the CLI's own ``--metrics_port`` helper (on ``metrics_ports``, the workers' then
    the coordinator's, or free ones). Yields (coordinator address, coordinator metrics URL,
    worker metrics URLs, worker addresses)."""
    from evalfleet.client.serve import served_metrics
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import SqliteJobStore

    servers, exporters = [], []
    ports = metrics_ports or [0] * (n_workers + 1)
    model_args = {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"}
    try:
        for port in ports[:n_workers]:
            metrics, exporter = served_metrics(_args("worker", port), "worker")
            exporters.append(exporter)
            backend = load_backend("hf", model_args, batch_size=4)
            servers.append(background_loop.run(start_worker(
                backend, model_args=model_args, metrics=metrics)))
        workers = [s.address for s in servers]
        metrics, exporter = served_metrics(_args("coordinator", ports[-1]), "coordinator")
        exporters.append(exporter)

        async def coordinator():
            server, runner = await start_coordinator(
                store=SqliteJobStore(store_path),
                options=CoordinatorOptions(workers=workers, data_dir=data_dir,
                                           health_interval_s=0.2))
            metrics.attach(runner)  # as `serve coordinator` does, before anything runs
            return server

        servers.append(background_loop.run(coordinator()))
        yield (servers[-1].address, exporters[-1].url, [e.url for e in exporters[:-1]],
               workers)
    finally:
        for server in reversed(servers):
            background_loop.run(server.stop(0.5))
        for exporter in exporters:
            exporter.close()


def run_job(address: str, spec: cpb.EvaluationSpec = JOB) -> cpb.Evaluation:
    """Create the job, follow it to its end; its final Evaluation."""
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120)
        for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                      timeout=300):
            pass
        return stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=30)


def test_names_labels_and_registries_follow_prometheus_conventions():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from evalfleet.common.metrics import CoordinatorMetrics, WorkerMetrics

    first, second = CoordinatorMetrics(), CoordinatorMetrics()  # no clash between servers
    first.answered(5)
    assert first.requests_answered._value.get() == 5 and \
        second.requests_answered._value.get() == 0
    worker = WorkerMetrics()
    families = [f for m in (first, worker) for f in
                text_string_to_metric_families(generate_latest(m.registry).decode())]
    assert len(families) >= 20
    for family in families:
        assert family.name.startswith("evalfleet_"), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, (sample.name, sample.labels)
            if family.type == "counter":
                assert sample.name.endswith("_total") or sample.name.endswith("_created"), \
                    sample.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "evalfleet-fleet.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, in panel order."""
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def served_names() -> set[str]:
    """Every metric family name a coordinator and a (CUDA) worker serve."""
    from evalfleet.common.metrics import CoordinatorMetrics, WorkerMetrics

    coordinator = CoordinatorMetrics()
    coordinator.attach(types.SimpleNamespace(
        jobs={}, scheduler=types.SimpleNamespace(jobs={}),
        registry=types.SimpleNamespace(workers={})))
    worker = WorkerMetrics()
    worker.instrument(types.SimpleNamespace(Loglikelihood=None, LoglikelihoodRolling=None,
                                            GenerateUntil=None),
                      types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0)))
    names = set()
    for family in (*coordinator.registry.collect(), *worker.registry.collect()):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_grafana_dashboard_shows_every_served_metric(monkeypatch):
    import json
    import re

    cuda = types.SimpleNamespace(is_available=lambda: True, mem_get_info=lambda i: (1, 2),
                                 memory_allocated=lambda i: 1)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "coordinator_job", "worker_job"}
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel)
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for query in dashboard_queries()
            for name in re.findall(r"\bevalfleet_[a-z_]+", query)}
    assert used == served_names()


def test_a_job_is_counted_on_the_coordinator_and_its_workers(
        background_loop, tiny_model_dir, data_dir, tmp_path):
    with metrics_fleet(background_loop, tiny_model_dir, data_dir,
                       tmp_path / "jobs.db") as (address, url, worker_urls, workers):
        final = run_job(address)
        assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
        n = final.unique_requests
        assert n >= 24
        coordinator = scrape(url)
        assert value(coordinator, "evalfleet_requests_planned_total") == n
        assert value(coordinator, "evalfleet_requests_answered_total") == n
        assert value(coordinator, "evalfleet_requests_from_store_total") == 0
        assert value(coordinator, "evalfleet_jobs_finished_total", state="succeeded") == 1
        assert value(coordinator, "evalfleet_jobs", state="running") == 0
        assert value(coordinator, "evalfleet_workers", state="ready") == 2
        assert value(coordinator, "evalfleet_requests_in_flight") == 0
        assert value(coordinator, "evalfleet_batches_in_flight") == 0
        batches = value(coordinator, "evalfleet_batch_duration_seconds_count",
                        kind="loglikelihood")
        assert batches >= 2
        assert value(coordinator, "evalfleet_store_write_duration_seconds_count",
                     op="answers") == batches
        assert value(coordinator, "evalfleet_store_write_duration_seconds_count",
                     op="results") == 1
        on_workers = [scrape(u) for u in worker_urls]
        assert sum(value(w, "evalfleet_worker_requests_total", kind="loglikelihood")
                   for w in on_workers) == n
        assert sum(value(w, "evalfleet_worker_batches_total", kind="loglikelihood")
                   for w in on_workers) == batches
        for w in on_workers:
            assert value(w, "evalfleet_worker_forward_duration_seconds_count") == \
                value(w, "evalfleet_worker_batches_total")
            assert value(w, "evalfleet_worker_queue_depth") == 0
            if value(w, "evalfleet_worker_batches_total"):
                assert value(w, "evalfleet_worker_positions_total", kind="loglikelihood") > 0
        # The same job again: every answer comes from the store, nothing is computed.
        again = run_job(address)
        assert again.state == cpb.EVALUATION_STATE_SUCCEEDED, again.error
        coordinator = scrape(url)
        assert value(coordinator, "evalfleet_requests_from_store_total") == n
        assert value(coordinator, "evalfleet_requests_answered_total") == n
        assert value(coordinator, "evalfleet_jobs_finished_total", state="succeeded") == 2
        # An invalid batch sent to a worker is counted by its status.
        with grpc.insecure_channel(workers[0]) as channel, pytest.raises(grpc.RpcError):
            ipb_grpc.InferenceServiceStub(channel).Loglikelihood(ipb.LoglikelihoodRequest(
                items=[ipb.LoglikelihoodItem(request_id="x", same_context=True)]), timeout=30)
        assert value(scrape(worker_urls[0]), "evalfleet_worker_errors_total",
                     status="invalid_argument") == 1
        # No label carries an evaluation id or a worker address.
        for text in (urllib.request.urlopen(u, timeout=10).read().decode()
                     for u in (url, *worker_urls)):
            assert final.id not in text and again.id not in text
            assert not any(w in text for w in workers)


def _sim_coordinator(background_loop, data_dir, scripts, **scheduler):
    """Simulated workers (bench/simworker.py) and a coordinator counting into metrics;
    returns (coordinator address, its metrics, every server)."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from simworker import start_simulated_worker

    from evalfleet.common.metrics import CoordinatorMetrics
    from evalfleet.server.scheduler import SchedulerConfig
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    servers = [background_loop.run(start_simulated_worker(s))[0] for s in scripts]
    metrics = CoordinatorMetrics()

    async def coordinator():
        server, runner = await start_coordinator(options=CoordinatorOptions(
            workers=[s.address for s in servers], data_dir=data_dir, health_interval_s=0.2,
            scheduler=SchedulerConfig(**scheduler)))
        metrics.attach(runner)
        return server

    servers.append(background_loop.run(coordinator()))
    with grpc.insecure_channel(servers[-1].address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        for _ in range(300):
            listed = stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10).workers
            if sum(w.state == cpb.WORKER_STATE_READY for w in listed) == len(scripts):
                break
            time.sleep(0.05)
    return servers[-1].address, metrics, servers


def test_failed_batches_retries_and_request_errors_are_counted_by_reason(
        background_loop, data_dir):
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from simworker import Script

    from evalfleet.server.planning import build_plan
    from evalfleet.server.spec import parse_spec

    spec = cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=6, bootstrap_iters=0)

    def count(metrics, name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels or None) or 0.0

    # A hung worker beside a good one: its batch fails at its deadline and goes to the other.
    address, metrics, servers = _sim_coordinator(
        background_loop, data_dir, [Script(hang=True), Script()], first_deadline_s=0.5,
        max_attempts=10)
    try:
        final = run_job(address, spec)
    finally:
        for server in reversed(servers):
            background_loop.run(server.stop(0.2))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert count(metrics, "evalfleet_batch_failures_total", reason="deadline_exceeded") >= 1
    assert count(metrics, "evalfleet_request_retries_total") >= 1
    assert count(metrics, "evalfleet_requests_answered_total") == final.unique_requests
    assert count(metrics, "evalfleet_jobs_finished_total", state="succeeded") == 1

    # A request a worker fails on every try (retryable): 3 errors, 2 retries, a failed job.
    bad = build_plan(parse_spec(spec), data_dir, []).tasks[0].request_ids[3]
    address, metrics, servers = _sim_coordinator(
        background_loop, data_dir, [Script(error_ids={bad: ("backend exploded", True)})])
    try:
        final = run_job(address, spec)
    finally:
        for server in reversed(servers):
            background_loop.run(server.stop(0.2))
    assert final.state == cpb.EVALUATION_STATE_FAILED
    assert "failed on every try (3 tries)" in final.error
    assert count(metrics, "evalfleet_request_errors_total", reason="retryable") == 3
    assert count(metrics, "evalfleet_request_retries_total") == 2
    assert count(metrics, "evalfleet_jobs_finished_total", state="failed") == 1
    assert count(metrics, "evalfleet_batch_failures_total", reason="deadline_exceeded") == 0


def test_device_memory_is_reported_for_a_cuda_device_only(monkeypatch):
    from evalfleet.common.metrics import WorkerMetrics

    calls = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: False,
        current_device=lambda: 0,
        mem_get_info=lambda i: calls.append(i) or (3 * 2**30, 8 * 2**30),
        memory_allocated=lambda i: 2**30)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))

    def samples(device) -> dict:
        metrics = WorkerMetrics()
        metrics.instrument(types.SimpleNamespace(Loglikelihood=None, LoglikelihoodRolling=None,
                                                 GenerateUntil=None),
                           types.SimpleNamespace(device=device))
        return {(s.name, s.labels.get("device")): s.value
                for f in metrics.registry.collect() for s in f.samples
                if s.name.startswith("evalfleet_worker_device_memory")}

    assert samples(types.SimpleNamespace(type="cuda", index=1)) == {
        ("evalfleet_worker_device_memory_used_bytes", "cuda:1"): 5 * 2**30,
        ("evalfleet_worker_device_memory_total_bytes", "cuda:1"): 8 * 2**30,
        ("evalfleet_worker_device_memory_allocated_bytes", "cuda:1"): 2**30}
    assert samples(types.SimpleNamespace(type="cpu", index=None)) == {}
    assert calls == [1]  # the CPU worker never touched CUDA


def test_serve_coordinator_metrics_port(tiny_worker, tmp_path):
    port, metrics_port = free_port(), free_port()
    server = ServerProcess(
        [EVALFLEET, "serve", "coordinator", "--port", str(port), "--metrics_port",
         str(metrics_port), "--workers", tiny_worker.address, "--store",
         str(tmp_path / "jobs.db"), "--health_interval", "0.2"],
        metrics_port, ready_path="/metrics", timeout_s=60, log_dir=tmp_path)
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 30
        # (the port serves from the start; the coordinator's gauges once it is up)
        while scrape(url).get("evalfleet_workers", {}).get((("state", "ready"),)) != 1:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        assert value(scrape(url), "evalfleet_requests_answered_total") == 0
        assert "_created" not in urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        server.stop()


def test_metrics_port_in_use_or_invalid_is_a_one_line_error(tmp_path, capsys):
    from evalfleet.client.cli import build_parser

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        done = subprocess.run(
            [EVALFLEET, "serve", "coordinator", "--port", str(free_port()), "--metrics_port",
             str(taken), "--store", str(tmp_path / "jobs.db")],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --metrics_port: cannot listen on 127.0.0.1:{taken} (Address already in use); "
        "choose a free port"]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "worker", "--metrics_port", "70000"])
    assert exited.value.code == 2
    assert "argument --metrics_port: '70000' is not a port (0-65535; 0: a free one)" in \
        capsys.readouterr().err
