"""``evalfleet gate --policy gate.yaml BASELINE CANDIDATE``: may the candidate ship.

BASELINE and CANDIDATE are results files or ``--output_path`` folders (as for ``results
compare``), or with ``--coordinator`` two evaluation ids the coordinator judges from its store
(``EvaluateGate``). The verdict is printed (``--json``: one JSON object on stdout), written as
markdown for a pull request comment (``--markdown FILE``) and, with ``--mlflow_args
tracking_uri=...,registered_model=NAME,model_version=N``, set as tags on that model version.
Exit 0 for GO, 1 for NO-GO, 3 for INCONCLUSIVE, 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from evalfleet.client.connect import add_client_security_flags
from evalfleet.common.errors import (
    EvalfleetError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

#: ``--mlflow_args`` keys that make sense for a run, not for tagging a model version.
_RUN_ONLY_KEYS = ("experiment", "run_name")


def add_gate_parser(sub: argparse._SubParsersAction) -> None:
    """The ``gate`` subcommand's flags."""
    g = sub.add_parser("gate", help="release gate: GO / NO-GO / INCONCLUSIVE for a candidate "
                                    "run against a baseline under a policy YAML",
                       description="May the candidate ship? Judges run B (candidate) against "
                                   "run A (baseline) under a policy: required tasks, floors, "
                                   "maximum regressions by paired tests. Exit 0 GO, 1 NO-GO, "
                                   "3 INCONCLUSIVE (too few documents to tell), 2 bad input.")
    g.add_argument("--log_level", default=argparse.SUPPRESS,
                   help="DEBUG, INFO, WARNING (default), ERROR")
    g.add_argument("baseline", help="run A: results file or folder (an evaluation id with "
                                    "--coordinator)")
    g.add_argument("candidate", help="run B: results file or folder (an evaluation id with "
                                     "--coordinator)")
    g.add_argument("--policy", required=True, metavar="<yaml>",
                   help="the gate policy (format: examples/gate.yaml)")
    g.add_argument("--json", action="store_true",
                   help="print the verdict as one JSON object on stdout")
    g.add_argument("--markdown", default=None, metavar="<path>",
                   help="also write the verdict as markdown (a pull request comment)")
    g.add_argument("--mlflow_args", default="", metavar="<args>",
                   help="tracking_uri=...,registered_model=NAME,model_version=N: tag that "
                        "model version with the verdict and the policy's sha256")
    g.add_argument("--coordinator", default=None,
                   help="host:port of a coordinator: BASELINE and CANDIDATE are evaluation ids "
                        "it judges from its store")
    g.add_argument("--newest", action="store_true",
                   help="of a folder's results files whose tasks differ, take the newest")
    add_client_security_flags(g)


def _mlflow_sink(text: str) -> Any:
    """The sink whose model version gets the verdict, checked before anything is judged."""
    from evalfleet.common.args import parse_kv_args
    from evalfleet.reporting.sinks.mlflow_sink import MlflowSink

    args = parse_kv_args(text, field="--mlflow_args")
    unused = [k for k in _RUN_ONLY_KEYS if k in args]
    if unused:
        raise InvalidArgumentError(f"--mlflow_args: {', '.join(unused)} is not used by "
                                   "evalfleet gate (it tags a model version, it logs no run)")
    if not args.get("registered_model") or not args.get("model_version"):
        raise InvalidArgumentError("--mlflow_args: evalfleet gate tags a model version: give "
                                   "registered_model=NAME,model_version=N")
    return MlflowSink.from_args(args)


def _policy_bytes(path: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"--policy {path}: no such file")
    return file.read_bytes()


def _local(args: argparse.Namespace, policy_bytes: bytes) -> dict[str, Any]:
    from evalfleet.reporting.gate import evaluate_gate
    from evalfleet.reporting.gate_policy import parse_policy
    from evalfleet.reporting.runs import load_run

    policy = parse_policy(policy_bytes, args.policy)
    a = load_run(args.baseline, strict=not args.newest)
    b = load_run(args.candidate, strict=not args.newest)
    for run in (a, b):
        if run.note:
            print(f"note: {run.note}", file=sys.stderr)
    return evaluate_gate(policy, a, b)


async def _remote(args: argparse.Namespace, policy_bytes: bytes) -> dict[str, Any]:
    import grpc

    from evalfleet.client.connect import client_security
    from evalfleet.client.submit import RemoteError
    from evalfleet.v1 import coordinator_pb2 as cpb
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    try:
        policy_text = policy_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"--policy {args.policy}: is not UTF-8 text") from None
    security = client_security(args)
    request = cpb.EvaluateGateRequest(baseline_id=args.baseline, candidate_id=args.candidate,
                                      policy_yaml=policy_text, policy_name=args.policy)
    async with security.channel(args.coordinator) as channel:
        try:
            response = await cpb_grpc.EvaluationServiceStub(channel).EvaluateGate(
                request, timeout=600, metadata=security.metadata)
        except grpc.aio.AioRpcError as exc:
            raise RemoteError(exc, args.coordinator) from exc
    return json.loads(response.verdict_json)


def run_gate(args: argparse.Namespace) -> int:
    """Judge, print, write and tag; the exit code says the verdict (the document's
    ``exit_code``: with --coordinator nothing here needs numpy or scipy)."""
    from evalfleet.reporting.gate_render import render_markdown, render_text

    sink = _mlflow_sink(args.mlflow_args) if args.mlflow_args else None
    policy_bytes = _policy_bytes(args.policy)
    verdict = (asyncio.run(_remote(args, policy_bytes)) if args.coordinator
               else _local(args, policy_bytes))
    print(json.dumps(verdict) if args.json else render_text(verdict), flush=True)
    if args.markdown:
        try:
            Path(args.markdown).write_text(render_markdown(verdict), encoding="utf-8")
        except OSError as exc:
            raise InvalidArgumentError(f"--markdown {args.markdown}: cannot write it "
                                       f"({exc.strerror or exc})") from None
        print(f"wrote {args.markdown}", file=sys.stderr)
    if sink is not None:
        _tag(sink, verdict)
    return int(verdict["exit_code"])


def _tag(sink: Any, verdict: dict[str, Any]) -> None:
    """Tag the model version with the verdict; a registry that cannot be reached is one line."""
    from evalfleet.reporting.sinks.mlflow_sink import gate_tags

    try:
        sink.tag_version(gate_tags(verdict))
    except EvalfleetError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's client raises many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnavailableError(f"--mlflow_args: could not tag {sink.registered_model} version "
                               f"{sink.model_version} at {sink.tracking_uri} ({first}); the "
                               "verdict above stands but is not recorded") from None
    print(f"tagged {sink.registered_model} version {sink.model_version} at "
          f"{sink.tracking_uri}: gate.verdict={verdict['verdict']}", file=sys.stderr)
