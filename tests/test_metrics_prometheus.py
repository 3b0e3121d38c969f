"""Acceptance (issue 27, metrics): a real Prometheus server (Debian's ``prometheus`` package,
which ``make install`` installs; started directly, never as the system service) scrapes a
coordinator and two workers of the tiny model every second while they run a job; its own
HTTP API then shows the three targets up and the coordinator's answered-requests counter equal
to the job's request count (and the workers' requests adding up to it); every query of the
Grafana dashboard (deploy/grafana) is valid PromQL to it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from test_metrics import dashboard_queries, metrics_fleet, run_job

from evalfleet.v1 import coordinator_pb2 as cpb

PROMETHEUS = Path("/usr/bin/prometheus")

pytestmark = pytest.mark.skipif(
    not PROMETHEUS.exists(),
    reason="Debian's prometheus package is not installed (`make install` installs it; or "
           "apt-get install prometheus)")


def _api(base: str, path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{base}/api/v1/{path}{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def _wait(what: str, check, log: Path, timeout_s: float = 30.0):
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except OSError:  # Prometheus still starting
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus: {what} after {timeout_s} s; its log:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _start_prometheus(tmp_path: Path, coordinator: int, workers: list[int]
                      ) -> tuple[subprocess.Popen, str, Path]:
    """Prometheus scraping these loopback metrics ports every second: (process, its URL, its
    log). It scrapes its first targets about 5 s after it starts (its discovery updates come
    at most every 5 s), so it starts before the servers do."""
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "evalfleet-coordinator",
             "static_configs": [{"targets": [f"127.0.0.1:{coordinator}"]}]},
            {"job_name": "evalfleet-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in workers]}]}]}))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", log


def test_prometheus_scrapes_a_coordinator_and_two_workers_during_a_job(
        background_loop, tiny_model_dir, data_dir, tmp_path):
    ports = [free_port() for _ in range(3)]
    prometheus, base, log = _start_prometheus(tmp_path, ports[-1], ports[:-1])
    try:
        with metrics_fleet(background_loop, tiny_model_dir, data_dir, tmp_path / "jobs.db",
                           metrics_ports=ports) as (address, _, _, _):
            def targets_up():
                active = _api(base, "targets")["activeTargets"]
                return len(active) == 3 and all(t["health"] == "up" for t in active) and active

            active = _wait("the three targets up", targets_up, log)
            assert {t["labels"]["job"] for t in active} == {"evalfleet-coordinator",
                                                            "evalfleet-worker"}
            final = run_job(address)
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            n = final.unique_requests
            assert n >= 24

            def equals_n(query: str):  # each target's next scrape (within ~1 s) brings it
                def check():
                    result = _api(base, "query", query=query)["result"]
                    return result if result and float(result[0]["value"][1]) == n else None
                return _wait(f"{query} == {n}", check, log)

            (series,) = equals_n("evalfleet_requests_answered_total")
            assert series["metric"]["job"] == "evalfleet-coordinator"
            equals_n("sum(evalfleet_worker_requests_total)")
            up = _api(base, "query", query="up")["result"]
            assert sorted(float(s["value"][1]) for s in up) == [1.0, 1.0, 1.0]
            assert _api(base, "query", query="evalfleet_workers{state='ready'}")[
                "result"][0]["value"][1] == "2"
            # Every query of the Grafana dashboard is valid PromQL to this Prometheus, and the
            # answers-per-second panel has data.
            for query in dashboard_queries():
                query = query.replace("$__rate_interval", "30s").replace(
                    "$coordinator_job", ".*").replace("$worker_job", ".*")
                result = _api(base, "query", query=query)["result"]
                if "evalfleet_requests_answered_total" in query:
                    assert result and float(result[0]["value"][1]) > 0, query
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
