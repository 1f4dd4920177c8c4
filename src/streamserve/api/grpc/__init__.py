"""The Open Inference Protocol over gRPC: KServe's ``inference.GRPCInferenceService``.

``grpc_predict_v2.proto`` is KServe's (Apache License 2.0, kept with its header), compiled into
``_generated`` by :mod:`streamserve.api.grpc.codegen`. gRPC is the ``grpc`` extra: nothing here
imports ``grpc`` until a server is made, so ``import streamserve`` never does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamserve.errors import ConfigurationError
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

if TYPE_CHECKING:
    from streamserve.api.grpc.server import GrpcServer


def grpc_server(
    core: ServingCore, settings: ApiSettings, is_ready: Callable[[], bool]
) -> GrpcServer:
    """The gRPC API of ``core`` on ``settings.grpc_port`` (not started); raises
    :class:`ConfigurationError` naming the extra to install when grpcio is missing."""
    if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):
        # gRPC's C core writes its own lines to stderr (a port it cannot bind, say), which
        # streamserve reports itself, in the log's format; read before grpc is imported.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        import grpc  # noqa: F401 - only whether it is there
    except ImportError as err:
        raise ConfigurationError(
            f"api.grpc_port is set, but the gRPC API needs grpcio ({err}): "
            "pip install 'streamserve[grpc]'"
        ) from err
    from streamserve.api.grpc.server import GrpcServer

    return GrpcServer(core, settings, is_ready)
