from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("backend", "model_name", "revision", "tokenizer", "max_length", "fingerprint", "dtype", "device", "num_parameters", "capabilities", "eot_token_id", "bos_token", "eos_token", "pad_token", "model_args")
    class ModelArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    EOT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model_name: str
    revision: str
    tokenizer: str
    max_length: int
    fingerprint: str
    dtype: str
    device: str
    num_parameters: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    eot_token_id: int
    bos_token: str
    eos_token: str
    pad_token: str
    model_args: _containers.ScalarMap[str, str]
    def __init__(self, backend: _Optional[str] = ..., model_name: _Optional[str] = ..., revision: _Optional[str] = ..., tokenizer: _Optional[str] = ..., max_length: _Optional[int] = ..., fingerprint: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., num_parameters: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., eot_token_id: _Optional[int] = ..., bos_token: _Optional[str] = ..., eos_token: _Optional[str] = ..., pad_token: _Optional[str] = ..., model_args: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LoglikelihoodItem(_message.Message):
    __slots__ = ("request_id", "context", "continuation")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    context: str
    continuation: str
    def __init__(self, request_id: _Optional[str] = ..., context: _Optional[str] = ..., continuation: _Optional[str] = ...) -> None: ...

class LoglikelihoodRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[LoglikelihoodItem]
    def __init__(self, items: _Optional[_Iterable[_Union[LoglikelihoodItem, _Mapping]]] = ...) -> None: ...

class TokenScores(_message.Message):
    __slots__ = ("request_id", "logprobs", "greedy")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    greedy: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, request_id: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., greedy: _Optional[_Iterable[bool]] = ...) -> None: ...

class LoglikelihoodResponse(_message.Message):
    __slots__ = ("results", "positions_computed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenScores]
    positions_computed: int
    def __init__(self, results: _Optional[_Iterable[_Union[TokenScores, _Mapping]]] = ..., positions_computed: _Optional[int] = ...) -> None: ...

class RollingItem(_message.Message):
    __slots__ = ("request_id", "text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class LoglikelihoodRollingRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RollingItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RollingItem, _Mapping]]] = ...) -> None: ...

class LoglikelihoodRollingResponse(_message.Message):
    __slots__ = ("results", "positions_computed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenScores]
    positions_computed: int
    def __init__(self, results: _Optional[_Iterable[_Union[TokenScores, _Mapping]]] = ..., positions_computed: _Optional[int] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("until", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k", "seed")
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    MAX_GEN_TOKS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    until: _containers.RepeatedScalarFieldContainer[str]
    max_gen_toks: int
    temperature: float
    do_sample: bool
    top_p: float
    top_k: int
    seed: int
    def __init__(self, until: _Optional[_Iterable[str]] = ..., max_gen_toks: _Optional[int] = ..., temperature: _Optional[float] = ..., do_sample: _Optional[bool] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateItem(_message.Message):
    __slots__ = ("request_id", "context", "params")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    context: str
    params: GenerationParams
    def __init__(self, request_id: _Optional[str] = ..., context: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ...) -> None: ...

class GenerateUntilRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GenerateItem]
    def __init__(self, items: _Optional[_Iterable[_Union[GenerateItem, _Mapping]]] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("request_id", "text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateUntilResponse(_message.Message):
    __slots__ = ("results", "positions_computed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Generation]
    positions_computed: int
    def __init__(self, results: _Optional[_Iterable[_Union[Generation, _Mapping]]] = ..., positions_computed: _Optional[int] = ...) -> None: ...
