"""The JSON bodies of the HTTP API as pydantic models: the schemas of its OpenAPI document.

These models describe what the routes answer and what the V2 inference route accepts; the
document (:mod:`streamserve.api.openapi`) takes their JSON Schema (2020-12, the dialect of
OpenAPI 3.1) as its components. An answer has exactly the fields listed here
(``additionalProperties: false``), so a route that grows a field without its model here is
caught by the schemathesis run; a request may carry more fields than the protocol names, which
the server ignores.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType

from streamserve.api.dashboard import DEFAULT_TOP_KEYS, MAX_TOP_KEYS
from streamserve.api.state import MAX_FILTER_CHARS, MAX_WHOLE_NUMBER
from streamserve.serving.output import ValueType
from streamserve.serving.slot import ModelRole
from streamserve.settings import ApiSettings


class Answer(BaseModel):
    """A JSON document the server answers: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class Asked(BaseModel):
    """A JSON document a client sends: these fields, and any others, which are ignored."""

    model_config = ConfigDict(extra="allow")


class ErrorAnswer(Answer):
    """Every refused or failed request: the reason, saying what, where and why."""

    error: str = Field(description="What went wrong, for the caller.")


# --- Open Inference Protocol (KServe V2) --------------------------------------------------------


class Datatype(enum.StrEnum):
    """The Open Inference Protocol's tensor datatypes (``streamserve.api.tensors.DATATYPES``)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    BYTES = "BYTES"


ParameterValue = bool | float | str
BinaryDataSize = Annotated[int, Field(ge=0)]
# A tensor's values, flat (row-major) or nested as its shape.
TensorData = TypeAliasType(
    "TensorData",
    "list[bool | float | str | TensorData]",
)


class ServerMetadata(Answer):
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class LiveAnswer(Answer):
    live: Literal[True]


class ReadyAnswer(Answer):
    ready: bool = Field(description="true (status 200) once the runtime serves, else false (400).")


class ModelReadyAnswer(Answer):
    name: str = Field(description="The model name asked about: the key.")
    ready: bool = Field(description="true (status 200) if the key has a model to answer with.")


class MetadataTensor(Answer):
    """A tensor a model takes or gives; -1 in a shape is a dimension of any size."""

    name: str
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]


class ModelMetadataParameters(Answer):
    model: str = Field(description="The name of the model that answers for the key.")
    description: str
    value_type: str = Field(description="The JSON type of the model's values.")


class ModelMetadata(Answer):
    """``GET /v2/models/{name}``: the key's answering model (current, else staged)."""

    name: str = Field(description="The key.")
    versions: list[str]
    platform: str = Field(description="The model's format, lower case: onnx, pmml, ...")
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: ModelMetadataParameters


class RequestParameters(Asked):
    """A request's parameters: any, and the binary tensor data extension's."""

    __pydantic_extra__: dict[str, ParameterValue] = Field(init=False)
    binary_data_output: bool | SkipJsonSchema[None] = Field(
        default=None,
        description="Every output as binary data (binary tensor data extension).",
    )


class InputParameters(Asked):
    """An input's parameters: any, and ``binary_data_size`` for its data sent as binary data."""

    __pydantic_extra__: dict[str, ParameterValue] = Field(init=False)
    binary_data_size: BinaryDataSize | None = Field(
        default=None,
        description="The size of the input's binary data (binary tensor data extension): "
        "then the input has no 'data'.",
    )


class OutputRequestParameters(Asked):
    """A requested output's parameters: any, and whether to answer it as binary data."""

    __pydantic_extra__: dict[str, ParameterValue] = Field(init=False)
    binary_data: bool | SkipJsonSchema[None] = Field(
        default=None,
        description="This output as binary data, or not (wins over binary_data_output).",
    )


class RequestInput(Asked):
    """An input tensor: its shape and its data, flat (row-major) or nested, or the size of its
    binary data (then no ``data``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["data"]},
                {
                    "required": ["parameters"],
                    "properties": {"parameters": {"required": ["binary_data_size"]}},
                },
            ]
        }
    )

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: InputParameters | None = None
    data: TensorData | SkipJsonSchema[None] = None


class RequestOutput(Asked):
    """An output the client asks for."""

    name: str
    parameters: OutputRequestParameters | None = None


# One red wine of the FLIP-23 demo's data set, as one row of the 11 features in model order.
WINE_REQUEST: dict[str, JsonValue] = {
    "id": "wine-1",
    "inputs": [
        {
            "name": "input",
            "shape": [1, 11],
            "datatype": "FP64",
            "data": [7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4],
        }
    ],
}


class InferenceRequest(Asked):
    """``POST /v2/models/{name}/infer``: rows to score with the key's current model.

    Either one 2-D tensor ``[rows, features]`` (positional, or named by the model's input names
    in order) or one ``[rows]`` / ``[rows, 1]`` tensor per named feature.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [WINE_REQUEST, {**WINE_REQUEST, "parameters": {"binary_data_output": True}}]
        }
    )

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="None: every output.")


class OutputParameters(Answer):
    binary_data_size: BinaryDataSize = Field(
        description="The size of the output's binary data, which follows the JSON answer."
    )


class ResponseOutput(Answer):
    """An output tensor: one value per row, flat; or the size of its binary data."""

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: OutputParameters | SkipJsonSchema[None] = None
    data: TensorData | SkipJsonSchema[None] = None


class InferenceParameters(Answer):
    model: str = Field(description="The name of the model that scored the rows.")


class InferenceResponse(Answer):
    model_name: str = Field(description="The key.")
    model_version: str
    id: str | SkipJsonSchema[None] = Field(
        default=None, description="The request's id, if it had one."
    )
    parameters: InferenceParameters
    outputs: list[ResponseOutput]


# --- the serving state --------------------------------------------------------------------------


class ServingStatistics(Answer):
    """A model's serving statistics (FLIP-23's ``ModelServingInfo``, and more)."""

    name: str
    description: str
    version: str
    model_type: str
    since: float = Field(description="When it started serving, epoch seconds; 0 if it has not.")
    invocations: int = Field(ge=0, description="Records scored.")
    total_duration_s: float
    min_duration_s: float = Field(description="Per record, amortized over its batch.")
    max_duration_s: float = Field(description="Per record, amortized over its batch.")
    batches: int = Field(ge=0)
    errors: int = Field(ge=0)
    batch_latency_counts: list[Annotated[int, Field(ge=0)]] = Field(
        description="Batches per latency bucket (the buckets of the metrics' histogram)."
    )


class ServedModelState(ServingStatistics):
    """A model the key holds, with its statistics."""

    average_duration_s: float
    load_duration_s: float
    input_names: list[str] = Field(description="Empty for a positional model.")
    input_width: int = Field(ge=0)
    value_type: ValueType
    live: bool = Field(description="false while evicted by the live-model budget.")
    reloads: int = Field(ge=0)


class Rejection(Answer):
    """A model that did not become current, and why."""

    key: str
    name: str
    version: str
    kind: str
    reason: str
    at: float = Field(description="Epoch seconds.")


class SlotState(Answer):
    """``GET /keys/{key}``: a key's models, statistics and recent rejections."""

    key: str
    pinned: bool
    value_type: ValueType | None
    positional_order: list[str] | None
    current: ServedModelState | None
    staged: ServedModelState | None
    previous: ServedModelState | None
    served_before: list[ServingStatistics]
    rejected_total: int = Field(ge=0)
    quarantined_total: int = Field(ge=0)
    recent_rejections: list[Rejection]


class Footprint(Answer):
    """The per-key state the server holds."""

    slots: int = Field(ge=0)
    unload_floors: int = Field(ge=0)
    keyless_rejections: int = Field(ge=0)
    loading: int = Field(ge=0)


class KeySort(enum.StrEnum):
    """The orders of ``/keys`` (``streamserve.api.state.KEY_SORTS``)."""

    KEY = "key"
    RECORDS = "records"
    ERRORS = "errors"


FilterText = Annotated[str, Field(max_length=MAX_FILTER_CHARS)]


class KeysQuery(Asked):
    """Which keys a page of ``/keys`` holds, in which order, from where."""

    limit: int = Field(
        default=ApiSettings.model_fields["keys_page_size"].default,
        ge=1,
        le=ApiSettings.model_fields["keys_page_max"].default,
        description="Keys in the page: api.keys_page_size if not given, at most "
        "api.keys_page_max (the maximum here is its default).",
    )
    offset: int = Field(
        default=0, ge=0, le=MAX_WHOLE_NUMBER, description="Where the page starts in the order."
    )
    after: str | SkipJsonSchema[None] = Field(
        default=None,
        description="The page starts after this key (key order only: not with sort or offset).",
    )
    prefix: FilterText = Field(default="", description="Only keys that start with it.")
    q: FilterText = Field(default="", description="Only keys that hold it, in any case.")
    sort: KeySort = Field(
        default=KeySort.KEY, description="By key, or the most records or errors first."
    )


class KeysState(Answer):
    """``GET /keys``: a page of keys' state, how to ask for the next, and the server's totals."""

    keys: list[SlotState]
    total: int = Field(ge=0, description="Keys that match the query.")
    offset: int = Field(ge=0)
    limit: int = Field(ge=1)
    next_offset: int | None = Field(ge=0, description="The next page's offset; null: no more.")
    next_after: str | None = Field(description="The next page's after (key order); null: none.")
    counts: dict[str, Annotated[int, Field(ge=0)]] = Field(
        description="Totals: records, results, errors, errors.<kind>, batches, model messages."
    )
    loads_pending: int = Field(ge=0)
    footprint: Footprint


class ModelEntry(Answer):
    key: str
    role: ModelRole
    name: str
    version: str
    model_type: str
    description: str


class ModelsList(Answer):
    """``GET /models``: every model held, one entry per key and role."""

    models: list[ModelEntry]


# --- admin --------------------------------------------------------------------------------------


class RollbackAnswer(Answer):
    key: str
    current: str = Field(description="The name of the model current again.")
    version: str


class PinAnswer(Answer):
    key: str
    pinned: bool


class UnloadAnswer(Answer):
    key: str
    unloaded: Literal[True]


# --- the dashboard ------------------------------------------------------------------------------


class TopSort(enum.StrEnum):
    """The orders of the dashboard's top keys."""

    RECORDS = "records"
    ERRORS = "errors"


class SummaryQuery(Asked):
    """What a dashboard poll asks for."""

    since: int = Field(
        default=0,
        ge=0,
        le=MAX_WHOLE_NUMBER,
        description="The previous answer's 'next': only what is newer.",
    )
    top: int = Field(
        default=DEFAULT_TOP_KEYS, ge=1, le=MAX_TOP_KEYS, description="How many top keys."
    )
    sort: TopSort = Field(default=TopSort.RECORDS, description="Top keys by records or errors.")
    q: FilterText = Field(default="", description="Only keys that hold it, in any case.")
    key: str | SkipJsonSchema[None] = Field(default=None, description="A key to show in full.")


class SummaryTotals(Answer):
    records: int = Field(ge=0)
    results: int = Field(ge=0)
    errors: int = Field(ge=0)
    keys: int = Field(ge=0)
    loads_pending: int = Field(ge=0)
    model_messages: int = Field(ge=0)
    consumer_lag: int | None


class HistoryColumns(Answer):
    """The samples since the cursor, as columns: one entry per sample."""

    seq: list[int]
    t: list[float] = Field(description="Epoch seconds.")
    records_per_s: list[float]
    results_per_s: list[float]
    errors_per_s: list[float]
    errors_per_s_by_kind: dict[str, list[float]]
    p50_s: list[float | None]
    p99_s: list[float | None]
    consumer_lag: list[int | None]
    keys: list[int]


class TimelineEvent(Answer):
    """A swap, rejection or unload."""

    seq: int
    at: float = Field(description="Epoch seconds.")
    kind: str
    key: str
    model: str
    version: str
    previous: str = Field(description="The model current before a swap.")
    reason: str
    error_kind: str


class TopKey(Answer):
    key: str
    model: str | None
    version: str | None
    staged: str | None
    records: int = Field(ge=0)
    errors: int = Field(ge=0)
    records_per_s: float
    rejected: int = Field(ge=0)
    pinned: bool


class TopKeys(Answer):
    sort: TopSort
    q: str
    total: int = Field(ge=0, description="Keys that match q.")
    rows: list[TopKey]


class DashboardSummary(Answer):
    """``GET /dashboard/summary``: what the dashboard shows, since its previous poll."""

    now: float
    version: str
    interval_s: float
    history_s: float
    poll_s: float
    next: int = Field(description="The cursor to send as since in the next poll.")
    totals: SummaryTotals
    history: HistoryColumns
    events: list[TimelineEvent]
    keys: TopKeys
    key: SlotState | None
