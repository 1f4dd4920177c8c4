"""The ``inference.GRPCInferenceService`` RPCs over an :class:`InferenceService` (grpc.aio).

Errors of the tree become the protocol's status codes, with the same messages as over REST: a
malformed request ``INVALID_ARGUMENT``, an unknown model or version ``NOT_FOUND`` (``UNAVAILABLE``
while the server is still starting: the model may be loading), a model that overran the
scoring deadline ``DEADLINE_EXCEEDED``. An unexpected exception answers ``INTERNAL`` with its
type and message; it is logged with its traceback, and the server goes on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import grpc

from streamserve.api.grpc import convert
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from streamserve.api.inference import InferenceService
from streamserve.errors import NotFoundError, RequestError, ScoringTimeoutError

T = TypeVar("T")

log = logging.getLogger(__name__)


class InferenceServicer(GRPCInferenceServiceServicer):
    """The six RPCs of the Open Inference Protocol's gRPC service, on grpc's asyncio server.

    Health and metadata are answered on the event loop (they read the slots, and take no
    time); an inference request is decoded, scored and encoded on a worker thread,
    ``inference_threads`` at a time, as over REST: scoring must not hold up the loop, and
    decoded requests must not pile up in memory.
    """

    def __init__(self, service: InferenceService, inference_threads: int) -> None:
        self._service = service
        self._limiter = anyio.CapacityLimiter(inference_threads)

    async def ServerLive(  # noqa: N802 - the protocol names its RPCs
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        ready = await self._answer(context, "ServerReady", self._service.server_ready)
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        ready = await self._answer(
            context,
            "ModelReady",
            lambda: self._service.model_ready(request.name, request.version),
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return convert.server_metadata_response(self._service.server_metadata())

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        return await self._answer(
            context,
            "ModelMetadata",
            lambda: convert.metadata_response(
                self._service.model_metadata(request.name, request.version)
            ),
        )

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        def infer() -> pb.ModelInferResponse:
            decoded = convert.decode_request(request)
            return convert.encode_response(self._service.infer(decoded))

        return await self._answer(context, "ModelInfer", infer, threaded=True)

    async def _answer(
        self, context: Any, rpc: str, work: Callable[[], T], *, threaded: bool = False
    ) -> T:
        """What ``work`` answers, or the RPC aborted with the status its error maps to."""
        try:
            if threaded:
                return await anyio.to_thread.run_sync(work, limiter=self._limiter)
            return work()
        except ScoringTimeoutError as err:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, str(err)
        except NotFoundError as err:
            starting = not self._service.server_ready()
            code = grpc.StatusCode.UNAVAILABLE if starting else grpc.StatusCode.NOT_FOUND
            message = str(err)
        except RequestError as err:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(err)
        except Exception as err:  # a defect: said to the client, logged, and serving goes on
            log.exception("gRPC %s failed", rpc)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error in {rpc}: {type(err).__name__}: {err}"
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # it raises, ending the RPC
