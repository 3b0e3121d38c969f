"""RequestKind / OutputType: each kind's capability field and RPC exist in inference.proto, the
values are the strings lm-eval and stored results use, and an unknown string is a clear error."""

from __future__ import annotations

import json

import pytest

from evalfleet.common.ids import request_id
from evalfleet.common.request_kind import OutputType, RequestKind, UnknownKindError
from evalfleet.v1 import inference_pb2 as ipb

_SERVICE = ipb.DESCRIPTOR.services_by_name["InferenceService"]


@pytest.mark.parametrize("kind", list(RequestKind))
def test_kind_maps_to_its_capability_field_and_rpc(kind: RequestKind) -> None:
    caps = ipb.Capabilities()
    field = ipb.Capabilities.DESCRIPTOR.fields_by_name[kind.capability]
    assert field.type == field.TYPE_BOOL
    setattr(caps, kind.capability, True)
    assert [f.name for f, _ in caps.ListFields()] == [kind.capability]
    method = _SERVICE.methods_by_name[kind.rpc]
    assert method.input_type.name == f"{kind.rpc}Request"
    assert RequestKind.from_rpc(kind.rpc) is kind


def test_values_are_lm_evals_strings_and_round_trip() -> None:
    assert [k.value for k in RequestKind] == ["loglikelihood", "loglikelihood_rolling",
                                              "generate_until"]
    assert [o.value for o in OutputType] == ["loglikelihood", "loglikelihood_rolling",
                                             "generate_until", "multiple_choice"]
    for kind in RequestKind:
        text = str(kind)
        assert RequestKind.parse(text) is kind and f"{kind}" == text == kind
        assert json.loads(json.dumps({"t": kind})) == {"t": text}
        assert request_id(kind, ("a", "b")) == request_id(text, ("a", "b"))
        assert kind.needs_logprobs == (text != "generate_until")
    for out in OutputType:
        assert OutputType.parse(str(out)) is out
    assert OutputType.MULTIPLE_CHOICE.request_kind is RequestKind.LOGLIKELIHOOD
    assert OutputType.GENERATE_UNTIL.request_kind is RequestKind.GENERATE_UNTIL
    assert OutputType.LOGLIKELIHOOD_ROLLING.request_kind is RequestKind.LOGLIKELIHOOD_ROLLING


def test_unknown_strings_are_one_clear_error() -> None:
    with pytest.raises(UnknownKindError, match=r"^request kind 'greedy_until' is not one of "
                       r"loglikelihood, loglikelihood_rolling, generate_until$"):
        RequestKind.parse("greedy_until")
    with pytest.raises(UnknownKindError, match=r"^output_type 'multiple choice' is not one of "
                       r".*multiple_choice$"):
        OutputType.parse("multiple choice")
    with pytest.raises(UnknownKindError, match="request kind 'multiple_choice'"):
        RequestKind.parse("multiple_choice")
    with pytest.raises(UnknownKindError, match="unknown InferenceService method 'Generate'"):
        RequestKind.from_rpc("Generate")
    with pytest.raises(ValueError, match="output_type None"):
        OutputType.parse(None)
