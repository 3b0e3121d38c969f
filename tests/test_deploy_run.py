"""deploy/k8s run for real: PostgreSQL, a worker and the coordinator start from the manifests' own
command lines and environment (with the image's ENV from deploy/Dockerfile) on loopback, and a job
runs through them.

What a cluster would provide is stood in for, and only that: each volume is a folder (Secrets'
files, the data mirror, a models volume holding the tiny model under the real model's name, empty
folders), each container port a free loopback port, the headless service's DNS name a loopback
DNS server answering 127.0.0.1, the ``postgres`` service name 127.0.0.1, and the GPU the CPU.
PostgreSQL is Debian's server set up as the postgres image's entrypoint sets it up from the same
env (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE; passwords on every TCP connection)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import free_port
from test_deploy import DEPLOY, _by, image_env
from test_fleet_dns import LoopbackDns

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

WORKERS_NAME = "evalfleet-workers.evalfleet.svc.cluster.local"


class Pod:
    """One workload's pod template: its volumes as local folders, its containers' command lines
    and environment with every mount path replaced by its folder."""

    def __init__(self, workload: dict, root: Path, sources: dict[str, Path]) -> None:
        self.spec = workload["spec"]["template"]["spec"]
        self.root = root
        self.folders: dict[str, Path] = {}
        for volume in self.spec.get("volumes", []) + [
                {"name": t["metadata"]["name"], "emptyDir": {}}
                for t in workload["spec"].get("volumeClaimTemplates", [])]:
            self.folders[volume["name"]] = self._volume(volume, sources)

    def _volume(self, volume: dict, sources: dict[str, Path]) -> Path:
        if "persistentVolumeClaim" in volume:
            return sources[volume["persistentVolumeClaim"]["claimName"]]
        folder = self.root / "volumes" / volume["name"]
        folder.mkdir(parents=True)
        if "secret" in volume:
            data = _by("Secret", volume["secret"]["secretName"])["stringData"]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (folder / item["path"]).write_text(data[item["key"]])
        else:
            assert "emptyDir" in volume, volume
        return folder

    def container(self, name: str, *, init: bool = False) -> dict:
        containers = self.spec["initContainers" if init else "containers"]
        return next(c for c in containers if c["name"] == name)

    def local(self, container: dict, text: str) -> str:
        """``text`` with the container's mount paths (longest first) made local folders."""
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if not mounts:
            return text
        paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
        # One pass, so that a folder that replaced a path is not replaced again.
        return re.sub(rf"(?<![\w/])({paths})(?=/|$|,)",
                      lambda m: str(self.folders[mounts[m.group(1)]]), text)

    def env(self, container: dict) -> dict[str, str]:
        """The process environment: this one's, the image's ENV, the container's ``env``."""
        env = dict(os.environ)
        for key, value in image_env().items():
            env[key] = self.local(container, value)
        for var in container.get("env", []):
            assert "valueFrom" not in var, f"{var['name']}: secrets reach containers as files"
            env[var["name"]] = self.local(container, var["value"])
        if "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}:
            env["TMPDIR"] = self.local(container, "/tmp")
        return env


class Loopback:
    """The cluster's network here: every container port a distinct free loopback port."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def serve(self, args: list[str]) -> tuple[list[str], dict[int, int]]:
        """``args`` listening on 127.0.0.1 (not every interface) at free ports; and the local
        port of each of the manifest's (``--port``, ``--metrics_port``)."""
        ports: dict[int, int] = {}
        out = []
        for arg in args:
            if arg.startswith("--host="):
                arg = _replace_once(arg, "=0.0.0.0", "=127.0.0.1")
            elif match := re.fullmatch(r"--(port|metrics_port)=(\d+)", arg):
                local = free_port()
                while local in self.taken:  # a process may not have bound its port yet
                    local = free_port()
                self.taken.add(local)
                ports[int(match[2])] = local
                arg = f"--{match[1]}={local}"
            out.append(arg)
        return out, ports


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} not in {text!r}: the cluster mapping needs updating"
    return text.replace(old, new)


def _start_postgres(pod: Pod):
    """Debian's server set up as the postgres image's entrypoint does from the container's env."""
    from pg_server import PostgresServer, unavailable_reason

    if reason := unavailable_reason():
        pytest.skip(reason)
    container = pod.container("postgres")
    env = {v["name"]: v["value"] for v in container["env"]}
    password = Path(pod.local(container, env["POSTGRES_PASSWORD_FILE"])).read_text().rstrip("\n")
    server = PostgresServer()
    server.user = env["POSTGRES_USER"]
    server.start()
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(server.user), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(env["POSTGRES_DB"])))
    # The image's rule for every connection from another pod: a password.
    (server.data / "pg_hba.conf").write_text("local all all trust\n"
                                             "host all all all scram-sha-256\n")
    server._run("pg_ctl", "-D", str(server.data), "-w", "reload")
    return server, env


class Process:
    """A container's process: started in an empty working folder with an empty HOME (the image's
    root file system is read-only), its output in a log."""

    def __init__(self, argv: list[str], env: dict[str, str], root: Path) -> None:
        self.home, self.cwd = root / "home", root / "workdir"
        self.home.mkdir(parents=True)
        self.cwd.mkdir(parents=True)
        self.log = root / "log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, env={**env, "HOME": str(self.home)}, cwd=self.cwd,
                                         stdout=log, stderr=subprocess.STDOUT)

    def wait_serving(self, port: int, service: str, timeout: float = 180) -> None:
        """Until the gRPC readiness probe (grpc.health.v1 Check of ``service``) says SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc.poll() is None, (
                    f"{self.proc.args[1:3]} exited ({self.proc.returncode}):\n"
                    f"{self.log.read_text()[-3000:]}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                        timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, (
                    f"{self.proc.args[1:3]} not serving {service!r} after {timeout} s:\n"
                    f"{self.log.read_text()[-3000:]}")
                time.sleep(0.2)

    def wrote_outside_its_volumes(self) -> list[str]:
        return [str(p) for p in (*self.home.rglob("*"), *self.cwd.rglob("*"))]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def _entrypoint() -> list[str]:
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.+\])$", (DEPLOY / "Dockerfile").read_text(),
                               flags=re.M)
    (program,) = yaml.safe_load(entrypoint)
    return [str(Path(sys.executable).parent / program)]


def _probe(container: dict) -> tuple[int, str]:
    probe = container["readinessProbe"]["grpc"]
    return probe["port"], probe.get("service", "")


def test_the_manifests_run_a_job(tmp_path, background_loop, data_dir, tiny_model_dir):
    models = tmp_path / "models-volume"
    models.mkdir()
    (models / "smollm2-135m").symlink_to(tiny_model_dir)
    sources = {"evalfleet-data": data_dir, "evalfleet-models": models}
    pods = {name: Pod(_by(kind, name), tmp_path / name, sources) for kind, name in (
        ("StatefulSet", "postgres"), ("StatefulSet", "evalfleet-worker"),
        ("Deployment", "evalfleet-coordinator"))}
    started: list[Process] = []
    pg = transport = None
    try:
        # PostgreSQL first (it holds its port at once, so no later free port is its), and its
        # container's readiness probe as written (PGHOST/PGPORT stand for the pod's socket folder).
        pg, pg_env = _start_postgres(pods["postgres"])
        probe = pods["postgres"].container("postgres")["readinessProbe"]["exec"]["command"]
        done = subprocess.run([str(pg.bin_dir / probe[0]), *probe[1:]], capture_output=True,
                              text=True, env={**os.environ, "PGHOST": "127.0.0.1",
                                              "PGPORT": str(pg.port)}, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr

        # The worker: the manifest's args; its ports free ones, the GPU the CPU.
        net = Loopback()
        pod = pods["evalfleet-worker"]
        container = pod.container("worker")
        args, worker_ports = net.serve([pod.local(container, a) for a in container["args"]])
        args = [_replace_once(a, "device=cuda", "device=cpu") if "device=" in a else a
                for a in args]
        worker = Process(_entrypoint() + args, pod.env(container), pod.root)
        started.append(worker)

        # The cluster's DNS, answering the headless service's name with the one worker pod.
        async def serve_dns():
            return (await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: LoopbackDns(["127.0.0.1"], WORKERS_NAME),
                local_addr=("127.0.0.1", 0)))[0]

        transport = background_loop.run(serve_dns())
        dns_port = transport.get_extra_info("sockname")[1]

        # The coordinator: its init container first, then its args.
        pod = pods["evalfleet-coordinator"]
        init = pod.container("pgpass", init=True)
        subprocess.run([pod.local(init, a) for a in init["command"]], check=True, timeout=30)
        container = pod.container("coordinator")
        args, coordinator_ports = net.serve([pod.local(container, a) for a in container["args"]])
        worker_port, worker_service = _probe(pods["evalfleet-worker"].container("worker"))
        for i, arg in enumerate(args):
            if arg.startswith("--workers="):
                args[i] = _replace_once(arg, f"dns:///{WORKERS_NAME}:{worker_port}",
                                        f"dns://127.0.0.1:{dns_port}/{WORKERS_NAME}:"
                                        f"{worker_ports[worker_port]}")
            elif arg.startswith("--db="):
                args[i] = _replace_once(arg, "@postgres:5432/", f"@127.0.0.1:{pg.port}/")
        env = pod.env(container)
        assert Path(env["PGPASSFILE"]).stat().st_mode & 0o777 == 0o600
        coordinator = Process(_entrypoint() + args, env, pod.root)
        started.append(coordinator)
        worker.wait_serving(worker_ports[worker_port], worker_service)
        coordinator_port, coordinator_service = _probe(container)
        port = coordinator_ports[coordinator_port]
        coordinator.wait_serving(port, coordinator_service)

        token = _by("Secret", "evalfleet-auth")["stringData"]["token"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            auth = (("authorization", f"Bearer {token}"),)
            spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=4, bootstrap_iters=0)
            evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec),
                                               metadata=auth, timeout=120)
            for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                          metadata=auth, timeout=300):
                pass
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id),
                                       metadata=auth, timeout=30)
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (
                final.error, coordinator.log.read_text()[-3000:])
            results = stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), metadata=auth,
                                      timeout=30)
            assert [t.task for t in results.tasks] == ["arc_easy"]
            workers = stub.ListWorkers(cpb.ListWorkersRequest(), metadata=auth, timeout=10)
            assert [w.source for w in workers.workers] == [f"dns:{WORKERS_NAME}"]

        # The job is in PostgreSQL, reached with the password (no password: refused).
        import psycopg

        url = f"postgresql://{pg_env['POSTGRES_USER']}@127.0.0.1:{pg.port}/{pg_env['POSTGRES_DB']}"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=10,
                            passfile=str(tmp_path / "none")).close()
        with psycopg.connect(url, passfile=env["PGPASSFILE"]) as conn:
            assert conn.execute("SELECT count(*) FROM evalfleet.jobs WHERE id = %s",
                                (evaluation.id,)).fetchone() == (1,)
        # Where the pods' annotations send Prometheus, both serve their metrics.
        for name, kind, ports, metric in (
                ("evalfleet-coordinator", "Deployment", coordinator_ports,
                 "evalfleet_requests_answered_total"),
                ("evalfleet-worker", "StatefulSet", worker_ports,
                 "evalfleet_worker_batches_total")):
            scrape = _by(kind, name)["spec"]["template"]["metadata"]["annotations"]
            url = (f"http://127.0.0.1:{ports[int(scrape['prometheus.io/port'])]}"
                   f"{scrape['prometheus.io/path']}")
            with urllib.request.urlopen(url, timeout=10) as response:
                assert metric in response.read().decode(), url
        for process in started:
            assert process.wrote_outside_its_volumes() == []
    finally:
        for process in reversed(started):
            process.stop()
        if transport is not None:
            transport.close()
        if pg is not None:
            pg.stop()
