"""Provider batch APIs (``batch_api=true``): the stand-ins speak OpenAI's files + batches and
Anthropic's message batches faithfully (driven here by the official ``openai`` and ``anthropic``
SDKs), and real inference workers on loopback send SubmitBatch/PollBatch through them with
answers equal to the same worker's online answers, an errored line coming back as an item
error, and a second submit of a tag reusing the first batch (OpenAI).

The stand-ins serve the tiny model, and for loglikelihood a second OpenAI stand-in the real
SmolLM2 (whose prompt logprobs pass the completions worker's probe), one each for the module;
the batch controls (hold/release, forced line errors) are switched per test and restored.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from conftest import anthropic_test_server
from provider_batch_standins import batch_submissions, control, openai_standin

from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.v1 import inference_pb2 as pb
from evalfleet.v1 import inference_pb2_grpc as pb_grpc

PAIRS = [("The capital of France is", " Paris"), ("One, two,", " three"),
         ("Hello", " world, again"), ("A", "")]
PROMPTS = ["Question: 2 + 2 =", "Once upon a time", "The sky is"]
STOP = ["\n\n"]


# ---------------------------------------------------------------------- fixtures
def _serving(start, model_dir, tmp_path_factory):
    """A stand-in for a module-scoped fixture, recording the online requests it answers."""
    srv = start(model_dir, record=tmp_path_factory.mktemp("stand-in") / "requests.jsonl")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def openai_srv(tiny_model_dir, tmp_path_factory):
    yield from _serving(openai_standin, tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def openai_real_srv(real_model_dir, tmp_path_factory):
    """The real model: a loglikelihood worker needs prompt logprobs that pass its probe."""
    yield from _serving(openai_standin, real_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def anthropic_srv(tiny_model_dir, tmp_path_factory):
    yield from _serving(anthropic_test_server, tiny_model_dir, tmp_path_factory)


@pytest.fixture()
def batch_controls(openai_srv, anthropic_srv):
    """Tests switch the controls; each starts and ends with none (no hold, no forced error)."""
    yield
    for srv in (openai_srv, anthropic_srv):
        control(srv, "/control/batches", {"hold": False, "error_first": 0, "fail_next": 0})
        control(srv, "/control/batches/release", {})


def _args(kind: str, openai_srv, anthropic_srv, model_dir, **extra) -> dict:
    if kind == "local-completions":
        args = {"model": "smol", "base_url": openai_srv.base_url,
                "tokenizer": str(model_dir), "probe_interval_s": 3600}
    elif kind == "local-chat-completions":
        args = {"model": "smol", "base_url": openai_srv.base_url}
    else:
        args = {"model": "claude-stand-in", "base_url": anthropic_srv.base_url,
                "api_key": "test-key"}
    return {**args, **extra}


@pytest.fixture(scope="module")
def workers(background_loop, openai_srv, openai_real_srv, anthropic_srv, tiny_model_dir,
            real_model_dir):
    """InferenceService stubs of real workers, by backend ("plain": completions without
    batch_api; "loglikelihood": completions with batch_api on the real model's stand-in)."""
    from evalfleet.inference.server import load_backend, start_worker

    specs = {name: (name, openai_srv, tiny_model_dir, {"batch_api": True}) for name in
             ("local-completions", "local-chat-completions", "anthropic-chat")}
    specs["plain"] = ("local-completions", openai_srv, tiny_model_dir, {})
    specs["loglikelihood"] = ("local-completions", openai_real_srv, real_model_dir,
                              {"batch_api": True})
    servers, channels, stubs = [], [], {}
    for key, (backend, srv, model_dir, extra) in specs.items():
        args = _args(backend, srv, anthropic_srv, model_dir, **extra)
        server = background_loop.run(start_worker(load_backend(backend, args), model_args=args))
        servers.append(server)
        channels.append(grpc.insecure_channel(server.address))
        stubs[key] = pb_grpc.InferenceServiceStub(channels[-1])
    yield stubs
    for channel in channels:
        channel.close()
    for server in servers:
        background_loop.run(server.stop(0.5))


def _ll_request(pairs=PAIRS) -> pb.LoglikelihoodRequest:
    return pb.LoglikelihoodRequest(items=[
        pb.LoglikelihoodItem(request_id=f"ll-{i}", context=c, continuation=x)
        for i, (c, x) in enumerate(pairs)])


def _gen_request(prompts=PROMPTS, chat=False) -> pb.GenerateUntilRequest:
    params = pb.GenerationParams(until=STOP, max_gen_toks=8)
    return pb.GenerateUntilRequest(items=[
        pb.GenerateItem(request_id=f"gen-{i}", params=params, chat_messages=chat,
                        context=json.dumps([{"role": "user", "content": p}]) if chat else p)
        for i, p in enumerate(prompts)])


def _until_terminal(stub, batch_id: str, **requests) -> pb.PollBatchResponse:
    deadline = time.monotonic() + 120
    while True:
        polled = stub.PollBatch(pb.PollBatchRequest(batch_id=batch_id, **requests), timeout=60)
        if polled.state != pb.PROVIDER_BATCH_STATE_IN_PROGRESS:
            return polled
        assert time.monotonic() < deadline, "the batch never ended"
        time.sleep(0.05)


def _run_batch(stub, tag: str, **requests) -> tuple[pb.SubmitBatchResponse, pb.PollBatchResponse]:
    submitted = stub.SubmitBatch(pb.SubmitBatchRequest(tag=tag, **requests), timeout=60)
    return submitted, _until_terminal(stub, submitted.batch_id, **requests)


def _scores(results) -> list:
    return [(r.request_id, list(r.logprobs), list(r.greedy), r.error.message, r.prompt_tokens,
             r.completion_tokens) for r in results]


def _texts(results) -> list:
    return [(r.request_id, r.text, r.hit_length_limit, r.error.message, r.prompt_tokens,
             r.completion_tokens) for r in results]


def _recorded(srv, since: int, path: str | None = None) -> list[str]:
    lines = srv.record.read_text().splitlines()[since:]
    bodies = [json.loads(line) for line in lines]
    return sorted(json.dumps(b["body"], sort_keys=True) for b in bodies
                  if path is None or b.get("path") == path)


def _record_mark(srv) -> int:
    return len(srv.record.read_text().splitlines()) if srv.record.exists() else 0


def _openai_input_bodies(srv, batch_id: str) -> list[str]:
    import openai

    client = openai.OpenAI(api_key="k", base_url=srv.base_url)
    batch = client.batches.retrieve(batch_id)
    lines = [json.loads(x) for x in client.files.content(batch.input_file_id).text.splitlines()]
    return sorted(json.dumps(line["body"], sort_keys=True) for line in lines)


# ---------------------------------------------------------------------- worker: answers
def test_completions_loglikelihood_batch_equals_online(workers, openai_real_srv):
    stub = workers["loglikelihood"]
    mark = _record_mark(openai_real_srv)
    online = stub.Loglikelihood(_ll_request(), timeout=60)
    online_bodies = _recorded(openai_real_srv, mark, "/v1/completions")
    submitted, polled = _run_batch(stub, "ll-equal", loglikelihood=_ll_request())
    assert polled.state == pb.PROVIDER_BATCH_STATE_ENDED
    # the empty continuation is answered by the worker (score 0), as online: 3 lines sent
    assert (polled.total, polled.succeeded, polled.errored, polled.pending) == (3, 3, 0, 0)
    assert _scores(polled.loglikelihood.results) == _scores(online.results)
    assert all(r.logprobs and r.prompt_tokens for r in polled.loglikelihood.results[:3])
    # each line's body is exactly the body the online path posted for that item
    assert _openai_input_bodies(openai_real_srv, submitted.batch_id) == online_bodies
    assert polled.loglikelihood.cost.prompt_tokens == online.cost.prompt_tokens > 0
    with pytest.raises(grpc.RpcError) as other:  # a poll must carry the submitted requests
        stub.PollBatch(pb.PollBatchRequest(batch_id=submitted.batch_id,
                                           loglikelihood=_ll_request(PAIRS[:2])), timeout=60)
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert other.value.details().startswith("requests: 2 of them go to the provider")
    # nothing for the provider (an empty continuation only): answered by the worker itself
    local, done = _run_batch(stub, "ll-local", loglikelihood=_ll_request(PAIRS[3:]))
    assert local.batch_id.startswith("evalfleet-local-")
    assert done.state == pb.PROVIDER_BATCH_STATE_ENDED and done.total == 0
    assert _scores(done.loglikelihood.results) == [("ll-0", [], [], "", 0, 0)]


def test_completions_generation_batch_equals_online(workers, openai_srv):
    stub = workers["local-completions"]
    mark = _record_mark(openai_srv)
    online = stub.GenerateUntil(_gen_request(), timeout=60)
    online_bodies = _recorded(openai_srv, mark, "/v1/completions")
    before = control(openai_srv, "/admin/stats")["usage"]
    submitted, polled = _run_batch(stub, "gen-equal", generate_until=_gen_request())
    assert polled.state == pb.PROVIDER_BATCH_STATE_ENDED
    assert _texts(polled.generate_until.results) == _texts(online.results)
    assert any(r.text for r in online.results)
    # the stand-in counts the batch lines' usage as its online answers': the answers' sums
    after = control(openai_srv, "/admin/stats")["usage"]
    for name in ("prompt_tokens", "completion_tokens"):
        assert after[name] - before[name] == sum(
            getattr(r, name) for r in polled.generate_until.results) > 0
    assert _openai_input_bodies(openai_srv, submitted.batch_id) == online_bodies


def test_chat_generation_batch_equals_online(workers, openai_srv):
    stub = workers["local-chat-completions"]
    mark = _record_mark(openai_srv)
    online = stub.GenerateUntil(_gen_request(chat=True), timeout=60)
    online_bodies = _recorded(openai_srv, mark, "/v1/chat/completions")
    submitted, polled = _run_batch(stub, "chat-equal", generate_until=_gen_request(chat=True))
    assert polled.state == pb.PROVIDER_BATCH_STATE_ENDED
    assert _texts(polled.generate_until.results) == _texts(online.results)
    assert _openai_input_bodies(openai_srv, submitted.batch_id) == online_bodies


def test_anthropic_generation_batch_equals_online(workers, anthropic_srv):
    import anthropic

    stub = workers["anthropic-chat"]
    mark = _record_mark(anthropic_srv)
    online = stub.GenerateUntil(_gen_request(chat=True), timeout=60)
    online_bodies = _recorded(anthropic_srv, mark)
    submitted, polled = _run_batch(stub, "anthropic-equal",
                                   generate_until=_gen_request(chat=True))
    assert submitted.batch_id.startswith("msgbatch_") and not submitted.reused
    assert polled.state == pb.PROVIDER_BATCH_STATE_ENDED
    assert (polled.total, polled.succeeded) == (3, 3)
    assert _texts(polled.generate_until.results) == _texts(online.results)
    assert polled.generate_until.cost.completion_tokens == online.cost.completion_tokens > 0
    # each request's params are exactly the body the online path posted (the stand-in records
    # them as it answers them, with no headers)
    assert _recorded(anthropic_srv, mark + len(online_bodies)) == online_bodies
    client = anthropic.Anthropic(api_key="k", base_url=anthropic_srv.base_url[:-3])
    assert client.messages.batches.retrieve(submitted.batch_id).processing_status == "ended"


# ---------------------------------------------------------------------- worker: errors, tags
@pytest.mark.parametrize("backend", ["local-completions", "anthropic-chat"])
def test_an_errored_line_is_an_item_error_and_only_it_is_resent(
        backend, workers, openai_srv, anthropic_srv, batch_controls):
    srv = openai_srv if backend == "local-completions" else anthropic_srv
    stub = workers[backend]
    request = _gen_request(chat=backend == "anthropic-chat")
    online = stub.GenerateUntil(request, timeout=60)
    control(srv, "/control/batches", {"error_first": 1})
    _, polled = _run_batch(stub, f"{backend}-errors", generate_until=request)
    assert polled.state == pb.PROVIDER_BATCH_STATE_ENDED
    assert (polled.total, polled.succeeded, polled.errored) == (3, 2, 1)
    failed = [r for r in polled.generate_until.results if r.HasField("error")]
    assert len(failed) == 1 and failed[0].error.retryable
    assert "made to fail" in failed[0].error.message
    answered = [t for t in _texts(polled.generate_until.results) if not t[3]]
    assert answered == [t for t in _texts(online.results) if t[0] != failed[0].request_id]
    resend = pb.GenerateUntilRequest(items=[i for i in request.items
                                            if i.request_id == failed[0].request_id])
    _, again = _run_batch(stub, f"{backend}-errors-resend", generate_until=resend)
    assert _texts(again.generate_until.results) == [
        t for t in _texts(online.results) if t[0] == failed[0].request_id]


def test_a_batch_the_provider_fails_answers_every_item_with_a_retryable_error(
        workers, openai_srv, batch_controls):
    control(openai_srv, "/control/batches", {"fail_next": 1})
    _, polled = _run_batch(workers["local-completions"], "fails", generate_until=_gen_request())
    assert polled.state == pb.PROVIDER_BATCH_STATE_FAILED
    assert [r.request_id for r in polled.generate_until.results] == ["gen-0", "gen-1", "gen-2"]
    for result in polled.generate_until.results:
        assert result.error.retryable and "stand_in_failure" in result.error.message


def test_a_second_submit_with_the_same_tag_reuses_the_batch(workers, openai_srv):
    stub = workers["local-completions"]
    before = batch_submissions(openai_srv)
    first = stub.SubmitBatch(pb.SubmitBatchRequest(tag="job-1/chunk-0",
                                                   generate_until=_gen_request()), timeout=60)
    again = stub.SubmitBatch(pb.SubmitBatchRequest(tag="job-1/chunk-0",
                                                   generate_until=_gen_request()), timeout=60)
    other = stub.SubmitBatch(pb.SubmitBatchRequest(tag="job-1/chunk-1",
                                                   generate_until=_gen_request()), timeout=60)
    assert not first.reused and again.reused and not other.reused
    assert again.batch_id == first.batch_id != other.batch_id
    assert batch_submissions(openai_srv) == before + 2


def test_a_held_batch_is_in_progress_until_released_or_expired(
        workers, openai_srv, anthropic_srv, batch_controls):
    for backend, srv in (("local-completions", openai_srv), ("anthropic-chat", anthropic_srv)):
        stub = workers[backend]
        request = _gen_request(chat=backend == "anthropic-chat")
        control(srv, "/control/batches", {"hold": True})
        for outcome in ("release", "expire"):
            submitted = stub.SubmitBatch(pb.SubmitBatchRequest(
                tag=f"{backend}-held-{outcome}", generate_until=request), timeout=60)
            deadline = time.monotonic() + 30
            while True:  # OpenAI: validating, then in_progress with the line count
                polled = stub.PollBatch(pb.PollBatchRequest(batch_id=submitted.batch_id,
                                                            generate_until=request), timeout=60)
                if polled.total == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert polled.state == pb.PROVIDER_BATCH_STATE_IN_PROGRESS
            assert (polled.total, polled.succeeded, polled.pending) == (3, 0, 3)
            assert polled.WhichOneof("answers") is None
            control(srv, "/control/batches/release", {"expire": outcome == "expire"})
            ended = _until_terminal(stub, submitted.batch_id, generate_until=request)
            status_only = stub.PollBatch(pb.PollBatchRequest(batch_id=submitted.batch_id),
                                         timeout=60)
            assert status_only.state == ended.state and status_only.WhichOneof("answers") is None
            results = ended.generate_until.results
            assert [r.request_id for r in results] == ["gen-0", "gen-1", "gen-2"]
            if outcome == "release":
                assert ended.state == pb.PROVIDER_BATCH_STATE_ENDED
                assert not any(r.HasField("error") for r in results)
            else:
                assert ended.state == pb.PROVIDER_BATCH_STATE_EXPIRED, backend
                assert (ended.succeeded, ended.errored) == (0, 3)
                assert all(r.error.retryable and "expired" in r.error.message for r in results)


# ---------------------------------------------------------------------- worker: refusals
def test_batch_api_refusals_are_clear(workers, tiny_model_dir):
    from evalfleet.inference.server import load_backend

    with pytest.raises(grpc.RpcError) as off:
        workers["plain"].SubmitBatch(pb.SubmitBatchRequest(tag="t",
                                                           generate_until=_gen_request()))
    assert off.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "batch_api=true" in off.value.details()
    with pytest.raises(grpc.RpcError) as chat:
        workers["local-chat-completions"].SubmitBatch(
            pb.SubmitBatchRequest(tag="t", loglikelihood=_ll_request()))
    assert chat.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "loglikelihood" in chat.value.details()
    with pytest.raises(grpc.RpcError) as untagged:
        workers["local-completions"].SubmitBatch(pb.SubmitBatchRequest(
            generate_until=_gen_request()))
    assert untagged.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert untagged.value.details().startswith("tag:")
    for key in ("local-completions", "anthropic-chat"):  # a batch the provider does not know
        with pytest.raises(grpc.RpcError) as unknown:
            workers[key].PollBatch(pb.PollBatchRequest(batch_id="batch_nope"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "batch_nope" in unknown.value.details()
    with pytest.raises(BackendArgumentError, match="batch_api"):
        load_backend("local-completions", {"model": "m", "base_url": "http://127.0.0.1:1/v1",
                                           "tokenizer_backend": "none", "batch_api": "maybe"})
    with pytest.raises(BackendArgumentError, match="batch_api"):
        load_backend("hf", {"pretrained": str(tiny_model_dir), "batch_api": True})


def test_capabilities_say_batch_api_and_the_fingerprint_is_unchanged(workers):
    info = workers["local-completions"].GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    plain = workers["plain"].GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert info.capabilities.batch_api and not plain.capabilities.batch_api
    assert info.fingerprint == plain.fingerprint
    for key in ("local-chat-completions", "anthropic-chat"):
        caps = workers[key].GetModelInfo(pb.GetModelInfoRequest(), timeout=30).capabilities
        assert caps.batch_api


# ---------------------------------------------------------------------- the stand-ins, by SDK
def _wait(retrieve, done, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        obj = retrieve()
        if done(obj):
            return obj
        assert time.monotonic() < deadline, f"still {obj}"
        time.sleep(0.05)


def test_the_openai_sdk_drives_the_stand_ins_files_and_batches(openai_srv, batch_controls):
    import openai

    client = openai.OpenAI(api_key="k", base_url=openai_srv.base_url)
    bodies = [{"model": "smol", "prompt": p, "max_tokens": 6, "temperature": 0} for p in PROMPTS]
    bodies.append({"model": "no-such-model", "prompt": "x", "max_tokens": 2})
    data = "".join(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                               "url": "/v1/completions", "body": b}) + "\n"
                   for i, b in enumerate(bodies)).encode()
    control(openai_srv, "/control/batches", {"hold": True})
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", len(data))
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    assert client.files.content(uploaded.id).content == data
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                  completion_window="24h", metadata={"owner": "tests"})
    assert (batch.object, batch.status, batch.metadata) == ("batch", "validating",
                                                            {"owner": "tests"})
    held = _wait(lambda: client.batches.retrieve(batch.id),
                 lambda b: b.status == "in_progress")
    assert (held.request_counts.total, held.request_counts.completed) == (4, 0)
    assert held.output_file_id is None and held.in_progress_at is not None
    # newest first, paginated with after/has_more by the SDK's auto-pagination
    listed = [b.id for b in client.batches.list(limit=1)]
    assert listed[0] == batch.id and len(listed) == batch_submissions(openai_srv)
    assert control(openai_srv, "/control/stats")["batches_held"] == 1
    control(openai_srv, "/control/batches/release", {})
    done = _wait(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (4, 3, 1)
    assert done.completed_at and done.finalizing_at and done.error_file_id
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["req-0", "req-1", "req-2"]
    for line, body in zip(output, bodies, strict=False):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        online = client.completions.create(**body)
        assert line["response"]["body"]["choices"][0]["text"] == online.choices[0].text
        assert line["response"]["body"]["usage"]["completion_tokens"] == \
            online.usage.completion_tokens
    [error] = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "req-3" and error["response"]["status_code"] == 404
    assert "no-such-model" in error["response"]["body"]["error"]["message"]
    # cancelled while held: every line in the error file as batch_cancelled
    control(openai_srv, "/control/batches", {"hold": True})
    second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                   completion_window="24h")
    _wait(lambda: client.batches.retrieve(second.id), lambda b: b.status == "in_progress")
    assert client.batches.cancel(second.id).status == "cancelling"
    cancelled = _wait(lambda: client.batches.retrieve(second.id),
                      lambda b: b.status == "cancelled")
    lines = client.files.content(cancelled.error_file_id).text.splitlines()
    assert [json.loads(x)["error"]["code"] for x in lines] == ["batch_cancelled"] * 4
    assert cancelled.output_file_id is None
    # a file whose lines do not match the endpoint fails the batch as a whole
    wrong = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    control(openai_srv, "/control/batches/release", {})
    failed = _wait(lambda: client.batches.retrieve(wrong.id), lambda b: b.status == "failed")
    assert failed.errors.data[0].code == "mismatched_endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/completions",
                              completion_window="24h")


def test_the_anthropic_sdk_drives_the_stand_ins_message_batches(anthropic_srv, batch_controls):
    import anthropic

    client = anthropic.Anthropic(api_key="k", base_url=anthropic_srv.base_url[:-3])
    params = [{"model": "claude-stand-in", "max_tokens": 6,
               "messages": [{"role": "user", "content": p}]} for p in PROMPTS]
    requests = [{"custom_id": f"req-{i}", "params": p} for i, p in enumerate(params)]
    requests.append({"custom_id": "bad", "params": {"model": "claude-stand-in",
                                                    "messages": []}})
    control(anthropic_srv, "/control/batches", {"hold": True})
    batch = client.messages.batches.create(requests=requests)
    assert (batch.type, batch.processing_status) == ("message_batch", "in_progress")
    assert batch.request_counts.processing == 4 and batch.results_url is None
    listed = [b.id for b in client.messages.batches.list(limit=1)]
    assert listed[0] == batch.id and len(listed) == batch_submissions(anthropic_srv)
    with pytest.raises(anthropic.AnthropicError):
        list(client.messages.batches.results(batch.id))  # no results before it ended
    control(anthropic_srv, "/control/batches/release", {})
    ended = _wait(lambda: client.messages.batches.retrieve(batch.id),
                  lambda b: b.processing_status == "ended")
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 3, 1)
    assert ended.ended_at is not None and ended.results_url.endswith(f"{batch.id}/results")
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    for i, p in enumerate(params):
        assert results[f"req-{i}"].type == "succeeded"
        online = client.messages.create(**p)
        assert results[f"req-{i}"].message.content[0].text == online.content[0].text
        assert results[f"req-{i}"].message.usage.output_tokens == online.usage.output_tokens
    assert results["bad"].type == "errored"
    assert results["bad"].error.error.type == "invalid_request_error"
    # cancelled while held: every request canceled
    control(anthropic_srv, "/control/batches", {"hold": True})
    second = client.messages.batches.create(requests=requests[:2])
    canceling = client.messages.batches.cancel(second.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    _wait(lambda: client.messages.batches.retrieve(second.id),
          lambda b: b.processing_status == "ended")
    assert [r.result.type for r in client.messages.batches.results(second.id)] == \
        ["canceled", "canceled"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[{"custom_id": "has space", "params": {}}])
    with pytest.raises(urllib.error.HTTPError) as keyless:  # the key is required, as online
        urllib.request.urlopen(f"http://127.0.0.1:{anthropic_srv.port}/v1/messages/batches",
                               timeout=10)
    assert keyless.value.code == 401


def test_a_backend_without_a_batch_api_refuses_both_rpcs(tiny_worker):
    with grpc.insecure_channel(tiny_worker.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        assert not stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).capabilities.batch_api
        calls = (lambda: stub.SubmitBatch(pb.SubmitBatchRequest(
                     tag="t", generate_until=_gen_request()), timeout=30),
                 lambda: stub.PollBatch(pb.PollBatchRequest(batch_id="b"), timeout=30))
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.details().startswith("backend 'hf' has no provider batch API")


@pytest.mark.parametrize(("backend", "limit"), [("local-chat-completions", 50_000),
                                                ("anthropic-chat", 100_000)])
def test_a_batch_over_the_providers_limit_is_refused_before_any_call(backend, limit):
    import asyncio

    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.inference.backends.base import BatchRequests, GenerationParams
    from evalfleet.inference.backends.base import GenerationRequest as Request
    from evalfleet.inference.server import load_backend

    nowhere = "http://127.0.0.1:9/v1"  # nothing listens: any call would fail otherwise
    model = load_backend(backend, {"model": "m", "base_url": nowhere, "api_key": "k",
                                   "batch_api": True})
    item = Request([{"role": "user", "content": "hi"}], GenerationParams(until=[]))
    with pytest.raises(InvalidArgumentError, match=f"at most {limit} in one batch"):
        asyncio.run(model.submit_batch("t", BatchRequests("generate_until", [item] * (limit + 1))))
