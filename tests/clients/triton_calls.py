"""What the stock-client scripts share: reading calls, writing answers, tensors as JSON.

The scripts run in .venv-clients (tritonclient pins protobuf 6, streamserve needs 7), so they
import nothing of streamserve or of the tests. A call is a JSON object, ``{"call": "infer",
...}``; its answer is a JSON object, or ``{"error": message, "status": status}`` when the
client raised.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def tls_files(options: list[str]) -> dict[str, str]:
    """The TLS files named by the options after the address: ``--ca FILE`` (the server's CA),
    and for mutual TLS ``--cert FILE --key FILE`` (the client's certificate and key)."""
    names = {"--ca": "ca", "--cert": "cert", "--key": "key"}
    return {names[flag]: path for flag, path in zip(options[::2], options[1::2], strict=True)}


def run(handlers: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
    """Answers each call of the JSON list on stdin with its handler; prints the answers."""
    answers = []
    for call in json.load(sys.stdin):
        try:
            answers.append(handlers[call["call"]](call))
        except InferenceServerException as err:
            answers.append({"error": err.message(), "status": err.status()})
    json.dump(answers, sys.stdout)


def array(spec: dict[str, Any]) -> np.ndarray:
    """An input's data as the numpy array of its datatype (BF16: ml_dtypes', as the client
    wants it)."""
    if spec["datatype"] == "BF16":
        import ml_dtypes

        return np.asarray(spec["data"], dtype=ml_dtypes.bfloat16)
    return np.asarray(spec["data"], dtype=triton_to_np_dtype(spec["datatype"]))


def tensor(values: np.ndarray | None, datatype: str) -> Any:
    """An output as JSON: its datatype, shape and data (BYTES as text)."""
    if values is None:
        return None
    data = [v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()]
    return {"datatype": datatype, "shape": list(values.shape), "data": data}
