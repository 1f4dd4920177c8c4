"""The gRPC API's server: TLS, its limits, the protocol's status codes for what is not the
request's fault, and gRPC as an extra (the stock clients' calls are in test_inference_clients).

These drive the server through streamserve's own generated stub and grpcio, in this process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from tls_certificates import write_pki

from builders import onnx_descriptor, onnx_linear
from streamserve.api.grpc import grpc_server
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from streamserve.api.grpc.codegen import GENERATED_DIR
from streamserve.api.grpc.server import GrpcServer
from streamserve.descriptor import ModelDescriptor
from streamserve.errors import ConfigurationError, InfrastructureError
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory

SLOW_TYPE = 302  # sums its row; a row holding 99 blocks until the test's gate opens


@pytest.fixture
def pair_core() -> Iterator[ServingCore]:
    with ServingCore(ServingSettings()) as core:
        core.submit_model(onnx_descriptor("pair", onnx_linear(np.array([1.0, 10.0]), 0.0), "pair"))
        assert core.wait_for_models(60)
        yield core


@contextmanager
def serving(
    core: ServingCore, settings: ApiSettings, is_ready: Callable[[], bool] = lambda: True
) -> Iterator[GrpcServer]:
    server = grpc_server(core, settings, is_ready)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def infer_request(rows: np.ndarray, model: str = "pair") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP64", shape=rows.shape)
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[rows.astype("<f8").tobytes()]
    )


def values(reply: pb.ModelInferResponse) -> list[float]:
    return np.frombuffer(reply.raw_output_contents[0], "<f8").tolist()


ONE_ROW = np.array([[1.0, 2.0]])


def test_with_the_api_certificate_it_speaks_tls_only(
    pair_core: ServingCore, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    settings = ApiSettings(
        grpc_port=0, tls_certfile=pki.server_cert, tls_keyfile=pki.server_key, tls_ca_certs=pki.ca
    )
    client_pem = pki.client.read_bytes()
    split = client_pem.index(b"-----BEGIN CERTIFICATE")
    key, certificate = client_pem[:split], client_pem[split:]
    with serving(pair_core, settings) as server:
        assert server.tls
        mutual = grpc.ssl_channel_credentials(pki.ca.read_bytes(), key, certificate)
        with grpc.secure_channel(server.address, mutual) as channel:
            reply = GRPCInferenceServiceStub(channel).ModelInfer(infer_request(ONE_ROW))
        assert values(reply) == [21.0]
        anonymous = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        for channel in (
            grpc.secure_channel(server.address, anonymous),  # no client certificate
            grpc.insecure_channel(server.address),  # no TLS at all
        ):
            with channel, pytest.raises(grpc.RpcError) as refused:
                GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_that_does_not_load_names_its_setting(
    pair_core: ServingCore, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    (tmp_path / "empty.pem").write_bytes(b"")
    settings = ApiSettings(
        grpc_port=0, tls_certfile=tmp_path / "empty.pem", tls_keyfile=pki.server_key
    )
    with pytest.raises(ConfigurationError, match=r"api\.tls_certfile .* are not a PEM"):
        grpc_server(pair_core, settings, lambda: True)


def test_a_message_over_max_body_bytes_is_refused_and_the_server_goes_on(
    pair_core: ServingCore,
) -> None:
    with (
        serving(pair_core, ApiSettings(grpc_port=0, max_body_bytes=4096)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request(np.ones((1000, 2))))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert values(stub.ModelInfer(infer_request(ONE_ROW))) == [21.0]


def test_a_model_past_the_scoring_deadline_answers_deadline_exceeded() -> None:
    gate = threading.Event()

    def slow(rows: np.ndarray) -> np.ndarray:
        if (rows == 99).any():
            gate.wait(600)
        return rows.sum(axis=1)

    registry = FactoryRegistry(FactoryContext())
    registry.register(SLOW_TYPE, FunctionFactory(slow, width=2))
    slow_model = ModelDescriptor(name="slow", data_type="slow", model_type=SLOW_TYPE, data=b"-")
    try:
        with ServingCore(ServingSettings(scoring_deadline_s=0.5), registry) as core:
            core.submit_model(slow_model)
            assert core.wait_for_models(60)
            with (
                serving(core, ApiSettings(grpc_port=0)) as server,
                grpc.insecure_channel(server.address) as channel,
            ):
                stub = GRPCInferenceServiceStub(channel)
                assert values(stub.ModelInfer(infer_request(ONE_ROW, "slow"))) == [3.0]
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(infer_request(np.array([[99.0, 1.0]]), "slow"))
                assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "did not return within 0.5 s" in refused.value.details()
                assert stub.ServerLive(pb.ServerLiveRequest()).live
    finally:
        gate.set()


def test_while_the_server_starts_a_model_not_there_yet_is_unavailable(
    pair_core: ServingCore,
) -> None:
    with (
        serving(pair_core, ApiSettings(grpc_port=0), is_ready=lambda: False) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready is False
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request(ONE_ROW, "later"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == (
            "model 'later' not found: no model serves that key yet (the server is still starting)"
        )
        assert values(stub.ModelInfer(infer_request(ONE_ROW))) == [21.0]


def test_an_unexpected_exception_answers_internal_and_the_server_goes_on(
    pair_core: ServingCore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("the readiness probe broke")

    with (
        serving(pair_core, ApiSettings(grpc_port=0), is_ready=broken) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ServerReady(pb.ServerReadyRequest())
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details() == (
            "internal error in ServerReady: RuntimeError: the readiness probe broke"
        )
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert values(stub.ModelInfer(infer_request(ONE_ROW))) == [21.0]
    assert "gRPC ServerReady failed" in caplog.text


def test_a_port_in_use_stops_the_start(pair_core: ServingCore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = grpc_server(pair_core, ApiSettings(grpc_port=port), lambda: True)
        with pytest.raises(InfrastructureError, match=f"did not start on 127.0.0.1:{port}"):
            server.start()


def test_grpc_is_imported_only_for_a_grpc_server() -> None:
    script = (
        "import sys; import streamserve, streamserve.cli, streamserve.api.app, "
        "streamserve.api.server, streamserve.api.grpc\n"
        "assert 'grpc' not in sys.modules, 'grpc imported'\n"
        "sys.modules['grpc'] = None  # as without the grpc extra\n"
        "from streamserve.api.grpc import grpc_server\n"
        "from streamserve.settings import ApiSettings\n"
        "from streamserve.errors import ConfigurationError\n"
        "try:\n"
        "    grpc_server(None, ApiSettings(grpc_port=0), lambda: True)\n"
        "except ConfigurationError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert (
        done.stdout.decode()
        .strip()
        .endswith(
            "the gRPC API needs grpcio (import of grpc halted; None in sys.modules): "
            "pip install 'streamserve[grpc]'"
        )
    )


def test_generated_code_matches_the_proto_file(tmp_path: Path) -> None:
    # In its own process, as the descriptor's: protoc in-process may crash beside TensorFlow.
    subprocess.run(
        [sys.executable, "-m", "streamserve.api.grpc.codegen", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh_files = sorted(tmp_path.glob("*_pb2*"))
    assert [p.name for p in fresh_files] == sorted(p.name for p in GENERATED_DIR.glob("*_pb2*"))
    for fresh in fresh_files:
        committed = GENERATED_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run python -m streamserve.api.grpc.codegen"
        )
