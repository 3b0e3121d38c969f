"""Shared fixtures: paths to the repository, the benchmark data mirror and the prepared models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from evalfleet.common.paths import cache_dir as user_cache_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("EVALFLEET_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
MODELS_DIR = REPO_ROOT / "models"
REAL_MODEL_DIR = MODELS_DIR / "smollm2-135m"
TINY_MODEL_DIR = MODELS_DIR / "tiny-smollm2"

#: Acceptance-size reference runs (`make test-acceptance`): the issues' full sizes (e.g. kobest
#: limit 50, humaneval/mbpp limit 5 without a generation cap). The default suite runs the same
#: tests at smaller sizes, so that it stays within CI's time.
ACCEPTANCE = os.environ.get("EVALFLEET_ACCEPTANCE") == "1"

# lm-eval and datasets must never reach for the hub in tests.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Compiled scoring kernels stay in the user's cache across sessions (compiling costs minutes);
# model fingerprints are remembered per test session, not in the user's cache.
os.environ.setdefault("NUMBA_CACHE_DIR", str(user_cache_dir() / "numba"))
# lm-eval's task library index (tasks/library.py): built once per machine, not per session
os.environ.setdefault("EVALFLEET_TASK_INDEX_DIR", str(user_cache_dir() / "task-index"))
os.environ["EVALFLEET_CACHE_DIR"] = tempfile.mkdtemp(prefix="evalfleet-test-cache-")


def answers(coroutine) -> list:
    """Run a backend call (a coroutine returning ``Answers``) and return its outcomes."""
    import asyncio

    return asyncio.run(coroutine).results


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} missing at {path}: run `make install` first")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only benchmark data mirror (../shared/data)."""
    return _require(DATA_DIR, "benchmark data mirror")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (fast tests)."""
    return _require(TINY_MODEL_DIR, "tiny test model")


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct dequantized to float32 safetensors."""
    return _require(REAL_MODEL_DIR, "SmolLM2-135M model")


class BackgroundLoop:
    """An asyncio loop in a thread, for hosting real gRPC servers beside synchronous tests."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 600):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def background_loop():
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def tiny_worker(background_loop, tiny_model_dir):
    """A real hf inference worker serving the tiny model on a loopback ephemeral port."""
    from evalfleet.inference.server import load_backend, start_worker

    model_args = {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"}
    backend = load_backend("hf", model_args, batch_size=4)
    server = background_loop.run(start_worker(backend, model_args=model_args))
    yield server
    background_loop.run(server.stop(0.5))


@pytest.fixture(scope="session")
def coordinator(background_loop, tiny_worker, data_dir, tmp_path_factory):
    """A real coordinator on loopback whose pool is the tiny worker; SQLite store on disk. Its
    operator lets clients name task folders (``--allow_include_paths``): tests bring their own
    task YAMLs."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import SqliteJobStore

    store = SqliteJobStore(tmp_path_factory.mktemp("store") / "jobs.db")
    options = CoordinatorOptions(policy=AccessPolicy(allow_include_paths=True))
    server, runner = background_loop.run(
        start_coordinator(workers=[tiny_worker.address], store=store, data_dir=data_dir,
                          options=options))
    yield server
    background_loop.run(server.stop(0.5))


@pytest.fixture(scope="session")
def lmeval_task_dir(tmp_path_factory, data_dir):
    """Override YAMLs that make lm-eval read its built-in tasks from the local mirror
    (written by ../shared/tools/lmeval_local.py)."""
    import subprocess
    import sys

    tool = REPO_ROOT.parent / "shared" / "tools" / "lmeval_local.py"
    out = tmp_path_factory.mktemp("lmeval_tasks")
    subprocess.run([sys.executable, str(tool), str(data_dir), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's binaries, initdb into a temporary folder, 127.0.0.1 on
    a free port), stopped at the end of the session; ``create_database()`` gives a fresh URL.
    Skipped, saying why, only where the server binaries are absent."""
    from pg_server import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


def _run_to_files(address: str, spec, output_path: Path) -> Path:
    """Run ``spec`` on the coordinator at ``address`` and write lm-eval's files, as ``eval``."""
    import grpc

    from evalfleet.client.submit import write_outputs
    from evalfleet.v1 import coordinator_pb2 as cpb
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120)
        for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id), timeout=900):
            pass
        results = stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=60)
        samples = list(stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation.id),
                                          timeout=120))
    written = write_outputs(str(output_path), results, samples)
    return written[0]


@pytest.fixture(scope="session")
def two_model_runs(background_loop, coordinator, real_model_dir, tmp_path_factory):
    """arc_easy (40 documents, samples logged) by the tiny model and by SmolLM2-135M, written as
    lm-eval's files: ``{"tiny": results_file, "real": results_file}``."""
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore
    from evalfleet.v1 import coordinator_pb2 as cpb

    out = tmp_path_factory.mktemp("runs")
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=40, log_samples=True,
                              bootstrap_iters=1000, batch_size="8")
    files = {"tiny": _run_to_files(coordinator.address, spec, out / "tiny")}
    model_args = {"pretrained": str(real_model_dir), "dtype": "float32", "device": "cpu"}
    backend = load_backend("hf", model_args, batch_size=8)
    worker = background_loop.run(start_worker(backend, model_args=model_args))
    store = SqliteJobStore(out / "real.db")
    server, _ = background_loop.run(start_coordinator(
        workers=[worker.address], store=store, data_dir=DATA_DIR))
    try:
        files["real"] = _run_to_files(server.address, spec, out / "real")
    finally:
        background_loop.run(server.stop(0.5))
        background_loop.run(worker.stop(0.5))
        background_loop.run(store.close())
    return files


SERVERS_DIR = REPO_ROOT / "tests" / "servers"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A real HTTP server in a child process on a loopback port; ready when ``ready_path``
    answers 200. Its output goes to a log file shown when it fails to start."""

    def __init__(self, argv: list[str], port: int, *, ready_path: str = "/v1/models",
                 timeout_s: float = 600, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        import subprocess
        import time
        import urllib.error
        import urllib.request

        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log_path = (log_dir or Path(tempfile.mkdtemp(prefix="evalfleet-srv-"))) / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"server {argv[:4]} exited ({self.proc.returncode}):\n"
                            f"{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}",
                                            timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server {argv[:4]} not ready after {timeout_s} s:\n"
                            f"{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text()[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - a hung child is killed
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


def openai_test_server(model_dir: Path, *extra: str, served_name: str = "smol",
                       log_dir: Path | None = None) -> ServerProcess:
    """tests/servers/openai_compat.py serving ``model_dir`` (vLLM's response shapes)."""
    import sys

    port = free_port()
    return ServerProcess([sys.executable, str(SERVERS_DIR / "openai_compat.py"), "--model",
                          str(model_dir), "--served-name", served_name, "--port", str(port),
                          *extra], port, log_dir=log_dir)


def anthropic_test_server(model_dir: Path, *extra: str, record: Path | None = None
                          ) -> ServerProcess:
    """tests/servers/anthropic_messages.py serving ``model_dir`` as "claude-stand-in";
    ``record``: where it writes each request body (``srv.record``)."""
    import sys

    port = free_port()
    args = [*extra, *(("--record", str(record)) if record else ())]
    srv = ServerProcess([sys.executable, str(SERVERS_DIR / "anthropic_messages.py"), "--model",
                         str(model_dir), "--port", str(port), *args], port)
    srv.record = record
    return srv


def recorded_requests(server) -> list[dict]:
    """The JSON bodies a test server started with ``--record`` (its ``record`` file) received."""
    import json

    if not server.record.exists():
        return []
    return [json.loads(line) for line in server.record.read_text().splitlines()]


def run_evaluation(address: str, spec, *, timeout_s: float = 900) -> tuple:
    """Create a job on a coordinator, wait for it; (final Evaluation, events, results dict or
    None, samples by task)."""
    import json

    import grpc

    from evalfleet.v1 import coordinator_pb2 as cpb
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=300)
        events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                           timeout=timeout_s))
        final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=30)
        if final.state != cpb.EVALUATION_STATE_SUCCEEDED:
            return final, events, None, {}
        results = stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=60)
        samples: dict[str, list[dict]] = {}
        for record in stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation.id), timeout=120):
            samples.setdefault(record.task, []).append(json.loads(record.json))
    return final, events, json.loads(results.results_json), samples


@pytest.fixture()
def worker_and_coordinator(background_loop, data_dir):
    """Start a worker for a loaded backend plus a coordinator on it; both stop afterwards.
    Returns the coordinator's address."""
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import start_coordinator

    started = []

    def start(backend, model_args=None) -> str:
        worker = background_loop.run(start_worker(backend, model_args=model_args))
        started.append(worker)
        coordinator, _ = background_loop.run(start_coordinator(
            workers=[worker.address], data_dir=data_dir))
        started.append(coordinator)
        return coordinator.address

    yield start
    for server in reversed(started):
        background_loop.run(server.stop(0.5))
