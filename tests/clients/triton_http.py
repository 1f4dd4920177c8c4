"""Calls streamserve's REST API with the stock ``tritonclient.http`` client, unchanged.

``python triton_http.py HOST:PORT [--ca FILE [--cert FILE --key FILE]] < calls.json`` (with
.venv-clients' interpreter) prints one JSON answer per call; with ``--ca`` it speaks HTTPS.
An input is sent as the client sends it by default, ``set_data_from_numpy(array)``: binary
tensor data; ``"binary": false`` sends it as JSON instead. Without ``"outputs"`` the client
asks for every output as binary data (its default); ``"outputs": [{"name": ..., "binary":
false}]`` asks for JSON.
"""

from __future__ import annotations

import sys
from typing import Any

import tritonclient.http as httpclient
from triton_calls import array, run, tensor, tls_files


def main() -> None:
    tls = tls_files(sys.argv[2:])
    if tls:
        files = {"ca_certs": tls["ca"], "certfile": tls.get("cert"), "keyfile": tls.get("key")}
        options = {name: path for name, path in files.items() if path is not None}
        client = httpclient.InferenceServerClient(url=sys.argv[1], ssl=True, ssl_options=options)
    else:
        client = httpclient.InferenceServerClient(url=sys.argv[1])
    run(
        {
            "live": lambda call: client.is_server_live(),
            "ready": lambda call: client.is_server_ready(),
            "model_ready": lambda call: client.is_model_ready(
                call["model"], call.get("version", "")
            ),
            "server_metadata": lambda call: client.get_server_metadata(),
            "model_metadata": lambda call: client.get_model_metadata(
                call["model"], call.get("version", "")
            ),
            "infer": lambda call: infer(client, call),
        }
    )


def infer(client: httpclient.InferenceServerClient, call: dict[str, Any]) -> Any:
    inputs = []
    for spec in call["inputs"]:
        data = array(spec)
        item = httpclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
        if call.get("binary", True):
            item.set_data_from_numpy(data)
        else:
            item.set_data_from_numpy(data, binary_data=False)
        inputs.append(item)
    outputs = None
    if "outputs" in call:
        outputs = [
            httpclient.InferRequestedOutput(output["name"], binary_data=output["binary"])
            for output in call["outputs"]
        ]
    result = client.infer(
        call["model"],
        inputs,
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("id", ""),
    )
    response = result.get_response()
    return {
        "response": response,
        "outputs": {
            output["name"]: tensor(result.as_numpy(output["name"]), output["datatype"])
            for output in response["outputs"]
        },
    }


if __name__ == "__main__":
    main()
