from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatTemplateSupport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAT_TEMPLATE_SUPPORT_UNSPECIFIED: _ClassVar[ChatTemplateSupport]
    CHAT_TEMPLATE_SUPPORT_NONE: _ClassVar[ChatTemplateSupport]
    CHAT_TEMPLATE_SUPPORT_RENDER: _ClassVar[ChatTemplateSupport]
    CHAT_TEMPLATE_SUPPORT_MESSAGES: _ClassVar[ChatTemplateSupport]

class ProviderBatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_BATCH_STATE_UNSPECIFIED: _ClassVar[ProviderBatchState]
    PROVIDER_BATCH_STATE_IN_PROGRESS: _ClassVar[ProviderBatchState]
    PROVIDER_BATCH_STATE_ENDED: _ClassVar[ProviderBatchState]
    PROVIDER_BATCH_STATE_EXPIRED: _ClassVar[ProviderBatchState]
    PROVIDER_BATCH_STATE_FAILED: _ClassVar[ProviderBatchState]
    PROVIDER_BATCH_STATE_CANCELED: _ClassVar[ProviderBatchState]
CHAT_TEMPLATE_SUPPORT_UNSPECIFIED: ChatTemplateSupport
CHAT_TEMPLATE_SUPPORT_NONE: ChatTemplateSupport
CHAT_TEMPLATE_SUPPORT_RENDER: ChatTemplateSupport
CHAT_TEMPLATE_SUPPORT_MESSAGES: ChatTemplateSupport
PROVIDER_BATCH_STATE_UNSPECIFIED: ProviderBatchState
PROVIDER_BATCH_STATE_IN_PROGRESS: ProviderBatchState
PROVIDER_BATCH_STATE_ENDED: ProviderBatchState
PROVIDER_BATCH_STATE_EXPIRED: ProviderBatchState
PROVIDER_BATCH_STATE_FAILED: ProviderBatchState
PROVIDER_BATCH_STATE_CANCELED: ProviderBatchState

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("backend", "model_name", "revision", "tokenizer", "max_length", "fingerprint", "dtype", "device", "num_parameters", "eot_token_id", "bos_token", "eos_token", "pad_token", "model_args", "capabilities", "library_versions")
    class ModelArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LibraryVersionsEntry(_message.Message):
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
    EOT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model_name: str
    revision: str
    tokenizer: str
    max_length: int
    fingerprint: str
    dtype: str
    device: str
    num_parameters: int
    eot_token_id: int
    bos_token: str
    eos_token: str
    pad_token: str
    model_args: _containers.ScalarMap[str, str]
    capabilities: Capabilities
    library_versions: _containers.ScalarMap[str, str]
    def __init__(self, backend: _Optional[str] = ..., model_name: _Optional[str] = ..., revision: _Optional[str] = ..., tokenizer: _Optional[str] = ..., max_length: _Optional[int] = ..., fingerprint: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., num_parameters: _Optional[int] = ..., eot_token_id: _Optional[int] = ..., bos_token: _Optional[str] = ..., eos_token: _Optional[str] = ..., pad_token: _Optional[str] = ..., model_args: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., library_versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogprobProbe(_message.Message):
    __slots__ = ("ran", "passed", "findings")
    RAN_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    ran: bool
    passed: bool
    findings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ran: _Optional[bool] = ..., passed: _Optional[bool] = ..., findings: _Optional[_Iterable[str]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("loglikelihood", "loglikelihood_rolling", "generate_until", "logprobs_unavailable_reason", "logprobs_remedy", "chat_only", "chat_template", "max_context_tokens", "prefix_sharing", "max_concurrent_batches", "logprob_probe", "same_context", "batch_api")
    LOGLIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    LOGLIKELIHOOD_ROLLING_FIELD_NUMBER: _ClassVar[int]
    GENERATE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_REMEDY_FIELD_NUMBER: _ClassVar[int]
    CHAT_ONLY_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SHARING_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_PROBE_FIELD_NUMBER: _ClassVar[int]
    SAME_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BATCH_API_FIELD_NUMBER: _ClassVar[int]
    loglikelihood: bool
    loglikelihood_rolling: bool
    generate_until: bool
    logprobs_unavailable_reason: str
    logprobs_remedy: str
    chat_only: bool
    chat_template: ChatTemplateSupport
    max_context_tokens: int
    prefix_sharing: bool
    max_concurrent_batches: int
    logprob_probe: LogprobProbe
    same_context: bool
    batch_api: bool
    def __init__(self, loglikelihood: _Optional[bool] = ..., loglikelihood_rolling: _Optional[bool] = ..., generate_until: _Optional[bool] = ..., logprobs_unavailable_reason: _Optional[str] = ..., logprobs_remedy: _Optional[str] = ..., chat_only: _Optional[bool] = ..., chat_template: _Optional[_Union[ChatTemplateSupport, str]] = ..., max_context_tokens: _Optional[int] = ..., prefix_sharing: _Optional[bool] = ..., max_concurrent_batches: _Optional[int] = ..., logprob_probe: _Optional[_Union[LogprobProbe, _Mapping]] = ..., same_context: _Optional[bool] = ..., batch_api: _Optional[bool] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("message", "retryable", "cancelled")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    message: str
    retryable: bool
    cancelled: bool
    def __init__(self, message: _Optional[str] = ..., retryable: _Optional[bool] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class BatchCost(_message.Message):
    __slots__ = ("positions_computed", "prompt_tokens", "completion_tokens", "http_requests", "retries", "throttled_seconds", "compute_seconds", "throttled_responses", "concurrency", "cached_tokens", "reasoning_tokens")
    POSITIONS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HTTP_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    positions_computed: int
    prompt_tokens: int
    completion_tokens: int
    http_requests: int
    retries: int
    throttled_seconds: float
    compute_seconds: float
    throttled_responses: int
    concurrency: int
    cached_tokens: int
    reasoning_tokens: int
    def __init__(self, positions_computed: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., http_requests: _Optional[int] = ..., retries: _Optional[int] = ..., throttled_seconds: _Optional[float] = ..., compute_seconds: _Optional[float] = ..., throttled_responses: _Optional[int] = ..., concurrency: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ...) -> None: ...

class LoglikelihoodItem(_message.Message):
    __slots__ = ("request_id", "context", "continuation", "same_context")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    SAME_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    context: str
    continuation: str
    same_context: bool
    def __init__(self, request_id: _Optional[str] = ..., context: _Optional[str] = ..., continuation: _Optional[str] = ..., same_context: _Optional[bool] = ...) -> None: ...

class LoglikelihoodRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[LoglikelihoodItem]
    def __init__(self, items: _Optional[_Iterable[_Union[LoglikelihoodItem, _Mapping]]] = ...) -> None: ...

class TokenScores(_message.Message):
    __slots__ = ("request_id", "logprobs", "greedy", "error", "total", "prompt_tokens", "completion_tokens", "cached_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    greedy: _containers.RepeatedScalarFieldContainer[bool]
    error: ItemError
    total: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., greedy: _Optional[_Iterable[bool]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., total: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class LoglikelihoodResponse(_message.Message):
    __slots__ = ("results", "cost")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenScores]
    cost: BatchCost
    def __init__(self, results: _Optional[_Iterable[_Union[TokenScores, _Mapping]]] = ..., cost: _Optional[_Union[BatchCost, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("results", "cost")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenScores]
    cost: BatchCost
    def __init__(self, results: _Optional[_Iterable[_Union[TokenScores, _Mapping]]] = ..., cost: _Optional[_Union[BatchCost, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("request_id", "context", "params", "chat_messages")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHAT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    context: str
    params: GenerationParams
    chat_messages: bool
    def __init__(self, request_id: _Optional[str] = ..., context: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., chat_messages: _Optional[bool] = ...) -> None: ...

class GenerateUntilRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GenerateItem]
    def __init__(self, items: _Optional[_Iterable[_Union[GenerateItem, _Mapping]]] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("request_id", "text", "error", "reasoning", "hit_length_limit", "unfinished_thinking", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    HIT_LENGTH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_THINKING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    error: ItemError
    reasoning: str
    hit_length_limit: bool
    unfinished_thinking: bool
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., reasoning: _Optional[str] = ..., hit_length_limit: _Optional[bool] = ..., unfinished_thinking: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class GenerateUntilResponse(_message.Message):
    __slots__ = ("results", "cost")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Generation]
    cost: BatchCost
    def __init__(self, results: _Optional[_Iterable[_Union[Generation, _Mapping]]] = ..., cost: _Optional[_Union[BatchCost, _Mapping]] = ...) -> None: ...

class ChatConversation(_message.Message):
    __slots__ = ("messages", "add_generation_prompt")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    add_generation_prompt: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., add_generation_prompt: _Optional[bool] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ApplyChatTemplateRequest(_message.Message):
    __slots__ = ("template_name", "conversations")
    TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    template_name: str
    conversations: _containers.RepeatedCompositeFieldContainer[ChatConversation]
    def __init__(self, template_name: _Optional[str] = ..., conversations: _Optional[_Iterable[_Union[ChatConversation, _Mapping]]] = ...) -> None: ...

class ApplyChatTemplateResponse(_message.Message):
    __slots__ = ("prompts", "template", "template_sha")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_SHA_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    template: str
    template_sha: str
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., template: _Optional[str] = ..., template_sha: _Optional[str] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("tag", "loglikelihood", "generate_until")
    TAG_FIELD_NUMBER: _ClassVar[int]
    LOGLIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    GENERATE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    tag: str
    loglikelihood: LoglikelihoodRequest
    generate_until: GenerateUntilRequest
    def __init__(self, tag: _Optional[str] = ..., loglikelihood: _Optional[_Union[LoglikelihoodRequest, _Mapping]] = ..., generate_until: _Optional[_Union[GenerateUntilRequest, _Mapping]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("batch_id", "reused")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    reused: bool
    def __init__(self, batch_id: _Optional[str] = ..., reused: _Optional[bool] = ...) -> None: ...

class PollBatchRequest(_message.Message):
    __slots__ = ("batch_id", "loglikelihood", "generate_until")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LOGLIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    GENERATE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    loglikelihood: LoglikelihoodRequest
    generate_until: GenerateUntilRequest
    def __init__(self, batch_id: _Optional[str] = ..., loglikelihood: _Optional[_Union[LoglikelihoodRequest, _Mapping]] = ..., generate_until: _Optional[_Union[GenerateUntilRequest, _Mapping]] = ...) -> None: ...

class PollBatchResponse(_message.Message):
    __slots__ = ("state", "total", "succeeded", "errored", "pending", "loglikelihood", "generate_until")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    ERRORED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LOGLIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    GENERATE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    state: ProviderBatchState
    total: int
    succeeded: int
    errored: int
    pending: int
    loglikelihood: LoglikelihoodResponse
    generate_until: GenerateUntilResponse
    def __init__(self, state: _Optional[_Union[ProviderBatchState, str]] = ..., total: _Optional[int] = ..., succeeded: _Optional[int] = ..., errored: _Optional[int] = ..., pending: _Optional[int] = ..., loglikelihood: _Optional[_Union[LoglikelihoodResponse, _Mapping]] = ..., generate_until: _Optional[_Union[GenerateUntilResponse, _Mapping]] = ...) -> None: ...
