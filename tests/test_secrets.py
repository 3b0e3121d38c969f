"""Which arguments are secrets, and how every place that shows arguments hides them
(``common/redact.py``); the whole path, for real, is in test_secrets_e2e.py."""

from __future__ import annotations

import json
import time

from evalfleet.common.redact import (
    is_secret_key,
    redact_argv,
    redact_model_args,
    redact_results,
    redact_spec,
)
from evalfleet.v1 import coordinator_pb2 as cpb

SECRET = "sk-test-secret"


def test_secret_keys_are_named_as_credentials_are_whatever_their_case():
    for name in ("api_key", "API_KEY", "apikey", "openai_api_key", "key", "X-Api-Key", "token",
                 "hf_token", "HF_TOKEN", "use_auth_token", "github_token", "password",
                 "db_passwd", "secret", "client_secret", "aws_secret_access_key",
                 "credentials", "Authorization", "Proxy-Authorization", "cookie"):
        assert is_secret_key(name), name
    for name in ("pretrained", "model", "base_url", "tokenizer", "tokenizer_backend",
                 "tokenized_requests", "add_bos_token", "pad_token", "max_gen_toks",
                 "max_tokens", "api_key_env", "dtype", "header", "keys_ordered"):
        assert not is_secret_key(name), name


def test_model_args_hide_their_secrets_in_every_form_they_are_written():
    cases = {
        # lm-eval's k=v text, split on commas and on spaces as parse_kv_args splits it (the
        # first implementation matched commas only: the key after a space was shown)
        f"pretrained=m api_key={SECRET},token=True": "pretrained=m api_key=***,token=True",
        f"model=smol,API_KEY={SECRET},hf_token=hf_x,add_bos_token=True":
            "model=smol,API_KEY=***,hf_token=***,add_bos_token=True",
        f"base_url=https://user:{SECRET}@host/v1,model=m": "base_url=https://user:***@host/v1,"
                                                          "model=m",
        f'{{"model": "m", "header": {{"Authorization": "Bearer {SECRET}", "X-Trace": "1"}}}}':
            '{"model": "m", "header": {"Authorization": "***", "X-Trace": "1"}}',
        "{not json": "***",
    }
    for given, shown in cases.items():
        assert redact_model_args(given) == shown, given
    args = {"model": "m", "api_key": 12345, "token": True, "password": "", "secret": None,
            "headers": f"{{'Authorization': 'Bearer {SECRET}'}}", "nested": {"hf_token": "x"}}
    assert redact_model_args(args) == {
        "model": "m", "api_key": "***", "token": True, "password": "", "secret": None,
        "headers": '{"Authorization": "***"}', "nested": {"hf_token": "***"}}
    assert redact_argv(["eval", "--model_args", f"model=m,api_key={SECRET}",
                        f'--metadata={{"token": "{SECRET}"}}', "--limit", "2"]) == \
        ["eval", "--model_args", "model=m,api_key=***", '--metadata={"token": "***"}',
         "--limit", "2"]


def test_the_results_header_uses_the_one_rule():
    from evalfleet.server.results import header_line

    header = header_line({"model": "local-completions", "model_args":
                          f"model=smol api_key={SECRET}", "gen_kwargs": {}, "limit": 2,
                          "num_fewshot": 0, "batch_size": 1})
    assert SECRET not in header and "api_key=***" in header


def test_a_spec_keeps_its_settings_and_loses_its_secrets():
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"],
                              model_args=f"pretrained=m,api_key={SECRET}",
                              metadata=f'{{"max_seq_lengths": [64], "token": "{SECRET}"}}')
    assert redact_spec(spec) is spec
    assert spec.model_args == "pretrained=m,api_key=***"
    assert json.loads(spec.metadata) == {"max_seq_lengths": [64], "token": "***"}
    bad = cpb.EvaluationSpec(model_args='{"api_key": ')  # left for validation to refuse
    assert redact_spec(bad).model_args == '{"api_key": '


def test_a_spec_stored_with_a_secret_is_answered_without_it():
    """A job stored before creation hid secrets is shown by GetEvaluation/ListEvaluations
    without them."""
    from evalfleet.server.job_queries import stored_evaluation as _stored_evaluation
    from evalfleet.server.store import JobRecord

    spec = cpb.EvaluationSpec(model="local-completions", tasks=["gsm8k"],
                              model_args=f"model=smol,api_key={SECRET}")
    record = JobRecord("j1", spec.SerializeToString(), cpb.EVALUATION_STATE_SUCCEEDED, "",
                       time.time(), time.time())
    answer = _stored_evaluation(record)
    assert answer.spec.model_args == "model=smol,api_key=***"
    assert SECRET.encode() not in answer.SerializeToString()


def _results_doc() -> dict:
    """A results document with its secrets in it, as a file written by an older version."""
    return {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5}},
            "configs": {"gsm8k": {"task": "gsm8k", "metadata": {"version": 3.0,
                                                                "api_key": SECRET}}},
            "config": {"model": "local-completions", "model_args": {"model": "smol",
                                                                    "api_key": SECRET}},
            "versions": {"gsm8k": 3.0}, "n-shot": {"gsm8k": 0}, "higher_is_better": {}}


def test_results_documents_lose_their_secrets_and_nothing_else():
    doc = _results_doc()
    shown = redact_results(doc)
    assert SECRET not in json.dumps(shown)
    assert shown["config"]["model_args"] == {"model": "smol", "api_key": "***"}
    assert shown["configs"]["gsm8k"]["metadata"] == {"version": 3.0, "api_key": "***"}
    assert shown["results"] == doc["results"] and doc["config"]["model_args"]["api_key"] == SECRET


class _FakeRun:
    """What the W&B sink hands to a run, kept."""

    def __init__(self) -> None:
        self.given: list = []
        self.config = self
        self.summary = self

    def update(self, *args, **kwargs) -> None:
        self.given.append(args)

    def log(self, *args, **kwargs) -> None:
        self.given.append(args)

    def log_artifact(self, artifact) -> None:
        self.given.append(artifact.text)


class _FakeArtifact:
    def __init__(self, *args, **kwargs) -> None:
        self.text = ""

    def new_file(self, *args, **kwargs):
        import io

        artifact = self

        class Handle(io.StringIO):
            def __exit__(self, *exc) -> None:
                artifact.text += self.getvalue()
                super().__exit__(*exc)

        return Handle()


class _FakeWandb:
    Artifact = _FakeArtifact

    class Table:
        def __init__(self, columns=None, data=None, dataframe=None) -> None:
            self.data = data


def test_trackers_are_given_no_secret_of_the_results_they_log(tmp_path, monkeypatch):
    """W&B (a fake run: the real one is in test_secrets_e2e.py) and MLflow (a real local file
    store) log a results document that holds secrets without them."""
    from evalfleet.reporting.sinks.mlflow_sink import MlflowSink
    from evalfleet.reporting.sinks.wandb_sink import WandbSink

    sink = WandbSink.__new__(WandbSink)
    sink.wandb, sink.run, sink.step = _FakeWandb(), _FakeRun(), None
    sink.log_results(_results_doc())
    assert sink.run.given and SECRET not in repr(sink.run.given)
    assert "'api_key': '***'" in repr(sink.run.given)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    run_id = MlflowSink(tracking_uri=f"file:{store}").log_run(_results_doc(), None)
    [params] = list(store.glob(f"*/{run_id}/params"))
    assert (params / "model_args.api_key").read_text() == "***"
    assert (params / "model_args.model").read_text() == "smol"
    leaked = [p for p in store.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_a_workers_model_info_tells_no_secret():
    """GetModelInfo answers the worker's model_args (the coordinator shows them in a
    --coordinator run's results): its secrets stay in the worker."""
    import asyncio

    from evalfleet.inference.backends.base import Capabilities, ModelInfo
    from evalfleet.inference.server import InferenceServicer

    class Backend:
        async def refresh(self) -> None:
            return None

        def model_info(self) -> ModelInfo:
            return ModelInfo("local-completions", "smol", "", "", 2048, "sha256:x", "", "", 0,
                             0, None, None, None, Capabilities(True, True, True))

    model_args = {"model": "smol", "api_key": SECRET,
                  "header": {"Authorization": f"Bearer {SECRET}"}}
    info = asyncio.run(InferenceServicer(Backend(), model_args).GetModelInfo(None, None))
    assert info.model_args["api_key"] == "***" and info.model_args["model"] == "smol"
    assert SECRET.encode() not in info.SerializeToString()
