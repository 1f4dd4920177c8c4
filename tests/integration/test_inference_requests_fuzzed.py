"""Whatever a REST inference request holds, it is answered or refused as a request error: never
an unexpected exception (an HTTP 500). Hypothesis writes the requests, near the protocol's shape."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from builders import onnx_descriptor, onnx_linear
from streamserve.api import v2
from streamserve.api.inference import InferenceService
from streamserve.errors import RequestError
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings

scalars = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=3)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
datatypes = st.sampled_from(
    ["FP32", "FP64", "INT8", "UINT64", "BOOL", "BF16", "FP16", "BYTES", "X"]
)
shapes = st.lists(st.integers(-1, 3), max_size=3) | json_values
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "alpha", "beta"]) | json_values},
    optional={
        "datatype": datatypes | json_values,
        "shape": shapes,
        "data": st.lists(
            st.integers(-300, 300) | st.floats(-1e40, 1e40) | st.booleans(), max_size=6
        )
        | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 24) | json_values}
        ),
    },
)
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "id": json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values),
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["value", "other"]) | json_values}),
            max_size=2,
        )
        | json_values,
    },
)


@st.composite
def well_formed(draw: st.DrawFn) -> dict[str, object]:
    """A request of the model's shape, of any datatype and values: most are answered."""
    rows = draw(st.integers(0, 3))
    numbers = st.integers(-300, 300) | st.floats(-1e40, 1e40, allow_nan=False) | st.booleans()
    tensor = {
        "name": "input",
        "datatype": draw(datatypes),
        "shape": [rows, 2],
        "data": draw(st.lists(numbers, min_size=2 * rows, max_size=2 * rows)),
    }
    return {"inputs": [tensor], "parameters": {"binary_data_output": draw(st.booleans())}}


@pytest.fixture(scope="module")
def service() -> Iterator[InferenceService]:
    with ServingCore(ServingSettings()) as core:
        core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), "pair"))
        assert core.wait_for_models(60)
        yield InferenceService(core)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=requests | well_formed(), binary=st.none() | st.binary(max_size=24))
def test_a_request_is_answered_or_refused_as_a_request_error(
    service: InferenceService, document: dict[str, object], binary: bytes | None
) -> None:
    data = None if binary is None else memoryview(binary)
    try:
        request, encoding = v2.decode_request("pair", document, data)
        answer, _ = v2.response_document(service.infer(request), encoding)
    except RequestError as err:
        event(f"refused: {type(err).__name__}")
        return
    event("answered")
    (output,) = answer["outputs"]
    assert (answer["model_name"], output["name"], output["datatype"]) == ("pair", "value", "FP64")
