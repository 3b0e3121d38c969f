import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_STATE_UNSPECIFIED: _ClassVar[EvaluationState]
    EVALUATION_STATE_QUEUED: _ClassVar[EvaluationState]
    EVALUATION_STATE_RUNNING: _ClassVar[EvaluationState]
    EVALUATION_STATE_SUCCEEDED: _ClassVar[EvaluationState]
    EVALUATION_STATE_FAILED: _ClassVar[EvaluationState]
    EVALUATION_STATE_CANCELLED: _ClassVar[EvaluationState]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_CONNECTING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_DOWN: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]

class GateVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_VERDICT_UNSPECIFIED: _ClassVar[GateVerdict]
    GATE_VERDICT_GO: _ClassVar[GateVerdict]
    GATE_VERDICT_NO_GO: _ClassVar[GateVerdict]
    GATE_VERDICT_INCONCLUSIVE: _ClassVar[GateVerdict]
EVALUATION_STATE_UNSPECIFIED: EvaluationState
EVALUATION_STATE_QUEUED: EvaluationState
EVALUATION_STATE_RUNNING: EvaluationState
EVALUATION_STATE_SUCCEEDED: EvaluationState
EVALUATION_STATE_FAILED: EvaluationState
EVALUATION_STATE_CANCELLED: EvaluationState
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_CONNECTING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_DOWN: WorkerState
WORKER_STATE_DRAINING: WorkerState
GATE_VERDICT_UNSPECIFIED: GateVerdict
GATE_VERDICT_GO: GateVerdict
GATE_VERDICT_NO_GO: GateVerdict
GATE_VERDICT_INCONCLUSIVE: GateVerdict

class EvaluationSpec(_message.Message):
    __slots__ = ("model", "model_args", "worker_addresses", "tasks", "num_fewshot", "batch_size", "limit", "seeds", "gen_kwargs", "log_samples", "bootstrap_iters", "apply_chat_template", "system_instruction", "include_paths", "metadata", "fewshot_as_multiturn", "confirm_run_unsafe_code", "samples", "chat_template_name", "predict_only", "cache_requests", "sinks", "model_fingerprint", "price_table")
    class SamplesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: DocIndices
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[DocIndices, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NUM_FEWSHOT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    GEN_KWARGS_FIELD_NUMBER: _ClassVar[int]
    LOG_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_ITERS_FIELD_NUMBER: _ClassVar[int]
    APPLY_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PATHS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FEWSHOT_AS_MULTITURN_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_RUN_UNSAFE_CODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    PREDICT_ONLY_FIELD_NUMBER: _ClassVar[int]
    CACHE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SINKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PRICE_TABLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_args: str
    worker_addresses: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    num_fewshot: int
    batch_size: str
    limit: float
    seeds: Seeds
    gen_kwargs: str
    log_samples: bool
    bootstrap_iters: int
    apply_chat_template: bool
    system_instruction: str
    include_paths: _containers.RepeatedScalarFieldContainer[str]
    metadata: str
    fewshot_as_multiturn: bool
    confirm_run_unsafe_code: bool
    samples: _containers.MessageMap[str, DocIndices]
    chat_template_name: str
    predict_only: bool
    cache_requests: str
    sinks: _containers.RepeatedCompositeFieldContainer[SinkRequest]
    model_fingerprint: str
    price_table: PriceTable
    def __init__(self, model: _Optional[str] = ..., model_args: _Optional[str] = ..., worker_addresses: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[str]] = ..., num_fewshot: _Optional[int] = ..., batch_size: _Optional[str] = ..., limit: _Optional[float] = ..., seeds: _Optional[_Union[Seeds, _Mapping]] = ..., gen_kwargs: _Optional[str] = ..., log_samples: _Optional[bool] = ..., bootstrap_iters: _Optional[int] = ..., apply_chat_template: _Optional[bool] = ..., system_instruction: _Optional[str] = ..., include_paths: _Optional[_Iterable[str]] = ..., metadata: _Optional[str] = ..., fewshot_as_multiturn: _Optional[bool] = ..., confirm_run_unsafe_code: _Optional[bool] = ..., samples: _Optional[_Mapping[str, DocIndices]] = ..., chat_template_name: _Optional[str] = ..., predict_only: _Optional[bool] = ..., cache_requests: _Optional[str] = ..., sinks: _Optional[_Iterable[_Union[SinkRequest, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., price_table: _Optional[_Union[PriceTable, _Mapping]] = ...) -> None: ...

class PriceTable(_message.Message):
    __slots__ = ("currency", "models", "source")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    currency: str
    models: _containers.RepeatedCompositeFieldContainer[ModelPrice]
    source: str
    def __init__(self, currency: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelPrice, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("model", "input_per_million", "cached_input_per_million", "output_per_million", "batch_discount")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    BATCH_DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    model: str
    input_per_million: float
    cached_input_per_million: float
    output_per_million: float
    batch_discount: float
    def __init__(self, model: _Optional[str] = ..., input_per_million: _Optional[float] = ..., cached_input_per_million: _Optional[float] = ..., output_per_million: _Optional[float] = ..., batch_discount: _Optional[float] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "cost", "currency")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: float
    currency: str
    def __init__(self, requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., cost: _Optional[float] = ..., currency: _Optional[str] = ...) -> None: ...

class SinkRequest(_message.Message):
    __slots__ = ("name", "run_name", "registered_model", "model_version", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    run_name: str
    registered_model: str
    model_version: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., run_name: _Optional[str] = ..., registered_model: _Optional[str] = ..., model_version: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DocIndices(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class Seeds(_message.Message):
    __slots__ = ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")
    RANDOM_SEED_FIELD_NUMBER: _ClassVar[int]
    NUMPY_SEED_FIELD_NUMBER: _ClassVar[int]
    TORCH_SEED_FIELD_NUMBER: _ClassVar[int]
    FEWSHOT_SEED_FIELD_NUMBER: _ClassVar[int]
    random_seed: int
    numpy_seed: int
    torch_seed: int
    fewshot_seed: int
    def __init__(self, random_seed: _Optional[int] = ..., numpy_seed: _Optional[int] = ..., torch_seed: _Optional[int] = ..., fewshot_seed: _Optional[int] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("task", "done", "total", "docs_total", "docs_done", "group")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOCS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOCS_DONE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    task: str
    done: int
    total: int
    docs_total: int
    docs_done: int
    group: str
    def __init__(self, task: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., docs_total: _Optional[int] = ..., docs_done: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "state", "spec", "progress", "error", "created_at", "updated_at", "unique_requests", "usage", "task_usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: EvaluationState
    spec: EvaluationSpec
    progress: _containers.RepeatedCompositeFieldContainer[TaskProgress]
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    unique_requests: int
    usage: TokenUsage
    task_usage: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[EvaluationState, str]] = ..., spec: _Optional[_Union[EvaluationSpec, _Mapping]] = ..., progress: _Optional[_Iterable[_Union[TaskProgress, _Mapping]]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unique_requests: _Optional[int] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., task_usage: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("task", "usage")
    TASK_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    task: str
    usage: TokenUsage
    def __init__(self, task: _Optional[str] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: EvaluationSpec
    def __init__(self, spec: _Optional[_Union[EvaluationSpec, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class EvaluationEvent(_message.Message):
    __slots__ = ("id", "state", "progress", "message", "time", "usage")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: EvaluationState
    progress: _containers.RepeatedCompositeFieldContainer[TaskProgress]
    message: str
    time: _timestamp_pb2.Timestamp
    usage: TokenUsage
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[EvaluationState, str]] = ..., progress: _Optional[_Iterable[_Union[TaskProgress, _Mapping]]] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations",)
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ...) -> None: ...

class GetResultsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class MetricValue(_message.Message):
    __slots__ = ("metric", "filter", "value", "stderr", "higher_is_better")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    metric: str
    filter: str
    value: float
    stderr: float
    higher_is_better: bool
    def __init__(self, metric: _Optional[str] = ..., filter: _Optional[str] = ..., value: _Optional[float] = ..., stderr: _Optional[float] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "alias", "version", "n_shot", "sample_len", "metrics")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    N_SHOT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LEN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    task: str
    alias: str
    version: str
    n_shot: int
    sample_len: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricValue]
    def __init__(self, task: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ..., n_shot: _Optional[int] = ..., sample_len: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricValue, _Mapping]]] = ...) -> None: ...

class GroupResult(_message.Message):
    __slots__ = ("group", "alias", "version", "subtasks", "metrics", "sample_len")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBTASKS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LEN_FIELD_NUMBER: _ClassVar[int]
    group: str
    alias: str
    version: str
    subtasks: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricValue]
    sample_len: int
    def __init__(self, group: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ..., subtasks: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[_Union[MetricValue, _Mapping]]] = ..., sample_len: _Optional[int] = ...) -> None: ...

class EvaluationResults(_message.Message):
    __slots__ = ("id", "tasks", "groups", "results_json", "positions_computed", "table")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_JSON_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskResult]
    groups: _containers.RepeatedCompositeFieldContainer[GroupResult]
    results_json: str
    positions_computed: int
    table: str
    def __init__(self, id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupResult, _Mapping]]] = ..., results_json: _Optional[str] = ..., positions_computed: _Optional[int] = ..., table: _Optional[str] = ...) -> None: ...

class StreamSamplesRequest(_message.Message):
    __slots__ = ("id", "tasks")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class SampleRecord(_message.Message):
    __slots__ = ("task", "json")
    TASK_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    task: str
    json: str
    def __init__(self, task: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("include_paths",)
    INCLUDE_PATHS_FIELD_NUMBER: _ClassVar[int]
    include_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, include_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "kind", "path", "dataset_path", "dataset_name", "data_available", "output_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    path: str
    dataset_path: str
    dataset_name: str
    data_available: bool
    output_type: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., path: _Optional[str] = ..., dataset_path: _Optional[str] = ..., dataset_name: _Optional[str] = ..., data_available: _Optional[bool] = ..., output_type: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("address", "source", "state", "backend", "model_name", "fingerprint", "in_flight_batches", "max_in_flight_batches", "requests_per_second", "requests_answered", "batches_done", "batches_failed", "last_error", "lease_expires_at", "evaluations", "state_since", "last_error_at", "api_concurrency", "throttled_responses")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_DONE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    API_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    address: str
    source: str
    state: WorkerState
    backend: str
    model_name: str
    fingerprint: str
    in_flight_batches: int
    max_in_flight_batches: int
    requests_per_second: float
    requests_answered: int
    batches_done: int
    batches_failed: int
    last_error: str
    lease_expires_at: _timestamp_pb2.Timestamp
    evaluations: _containers.RepeatedScalarFieldContainer[str]
    state_since: _timestamp_pb2.Timestamp
    last_error_at: _timestamp_pb2.Timestamp
    api_concurrency: int
    throttled_responses: int
    def __init__(self, address: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[_Union[WorkerState, str]] = ..., backend: _Optional[str] = ..., model_name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., in_flight_batches: _Optional[int] = ..., max_in_flight_batches: _Optional[int] = ..., requests_per_second: _Optional[float] = ..., requests_answered: _Optional[int] = ..., batches_done: _Optional[int] = ..., batches_failed: _Optional[int] = ..., last_error: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evaluations: _Optional[_Iterable[str]] = ..., state_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., api_concurrency: _Optional[int] = ..., throttled_responses: _Optional[int] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("lease_seconds", "heartbeat_interval_seconds")
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: float
    heartbeat_interval_seconds: float
    def __init__(self, lease_seconds: _Optional[float] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_seconds",)
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: float
    def __init__(self, lease_seconds: _Optional[float] = ...) -> None: ...

class UnregisterWorkerRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class UnregisterWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluateGateRequest(_message.Message):
    __slots__ = ("baseline_id", "candidate_id", "policy_yaml", "policy_name")
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_YAML_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    baseline_id: str
    candidate_id: str
    policy_yaml: str
    policy_name: str
    def __init__(self, baseline_id: _Optional[str] = ..., candidate_id: _Optional[str] = ..., policy_yaml: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class GateCheck(_message.Message):
    __slots__ = ("task", "metric", "filter", "kind", "tier", "status", "message")
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task: str
    metric: str
    filter: str
    kind: str
    tier: str
    status: str
    message: str
    def __init__(self, task: _Optional[str] = ..., metric: _Optional[str] = ..., filter: _Optional[str] = ..., kind: _Optional[str] = ..., tier: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EvaluateGateResponse(_message.Message):
    __slots__ = ("verdict", "verdict_json", "checks", "policy_sha256", "reasons")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SHA256_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    verdict: GateVerdict
    verdict_json: str
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    policy_sha256: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, verdict: _Optional[_Union[GateVerdict, str]] = ..., verdict_json: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ..., policy_sha256: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...
