"""streamserve: serve machine-learning models on streams.

Models arrive as ``ModelDescriptor`` messages, records on another stream; each key's current
model scores its records and is replaced, without a restart, when a new model arrives. This
module is the embedding API: what an application imports to serve models in its own process.

    import streamserve

    with streamserve.ServingCore(streamserve.ServingSettings()) as core:
        core.submit_model(descriptor)
        core.wait_for_models(timeout_s=60)
        codec = streamserve.build_codec(streamserve.CodecSettings(format="json"))
        for output in streamserve.score_records(core, codec, [b'{"dataType": "wine", ...}']):
            print(output.key, output.model, output.value if output.ok else output.reason)
"""

__version__ = "0.1.0"

from streamserve.codecs.base import Codec, DecodedBatch, Framing, InputRecord
from streamserve.codecs.registry import build_codec
from streamserve.descriptor import (
    ModelDescriptor,
    ModelType,
    OutputRule,
    decode_descriptor,
    encode_descriptor,
)
from streamserve.errors import (
    ConfigurationError,
    InfrastructureError,
    RejectedInput,
    StreamserveError,
)
from streamserve.runtime.base import BatchLoop, RunSummary, Runtime, Transport
from streamserve.runtime.batch import RecordOutput, score_records
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.registry import RuntimeContext, build_runtime
from streamserve.serving.core import ServingCore
from streamserve.serving.routing import KeyRouter
from streamserve.settings import (
    BatchSettings,
    CodecSettings,
    ServingSettings,
    Settings,
    load_settings,
)

__all__ = [
    "BatchLoop",
    "BatchSettings",
    "Codec",
    "CodecSettings",
    "ConfigurationError",
    "DecodedBatch",
    "EmbeddedRuntime",
    "Framing",
    "InfrastructureError",
    "InputRecord",
    "KeyRouter",
    "ModelDescriptor",
    "ModelType",
    "OutputRule",
    "RecordOutput",
    "RejectedInput",
    "RunSummary",
    "Runtime",
    "RuntimeContext",
    "ServingCore",
    "ServingSettings",
    "Settings",
    "StreamserveError",
    "Transport",
    "__version__",
    "build_codec",
    "build_runtime",
    "decode_descriptor",
    "encode_descriptor",
    "load_settings",
    "score_records",
]
