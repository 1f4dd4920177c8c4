"""Regenerates the Python code of the Open Inference Protocol's gRPC service (a development tool).

Run ``python -m streamserve.api.grpc.codegen`` after changing ``grpc_predict_v2.proto``; a test
checks that the committed code matches what this produces. Needs the ``dev`` extra
(grpcio-tools and mypy-protobuf).

The ``.proto`` is compiled as ``streamserve/api/grpc/_generated/grpc_predict_v2.proto``, so
that the generated service module imports its messages from this package (protoc writes
imports after the ``.proto`` file's path), and so that the file's name in protobuf's pool is
streamserve's own.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).parent
PROTO_FILE = "grpc_predict_v2.proto"
GENERATED_DIR = PROTO_DIR / "_generated"
PACKAGE_PATH = Path("streamserve", "api", "grpc", "_generated")


def generate(out_dir: Path) -> list[Path]:
    """Writes the ``*_pb2.py``, ``*_pb2_grpc.py`` modules and their ``.pyi`` into ``out_dir``."""
    from grpc_tools import protoc  # dev-only dependency, imported when asked for

    plugins = {
        name: shutil.which(f"protoc-gen-{name}", path=str(Path(sys.executable).parent))
        for name in ("mypy", "mypy_grpc")
    }
    if None in plugins.values():
        raise RuntimeError(
            "protoc-gen-mypy not found beside the interpreter: install the dev extra"
        )
    with tempfile.TemporaryDirectory() as staging:
        root = Path(staging)
        (root / PACKAGE_PATH).mkdir(parents=True)
        shutil.copyfile(PROTO_DIR / PROTO_FILE, root / PACKAGE_PATH / PROTO_FILE)
        args = [
            "protoc",
            f"--proto_path={root}",
            f"--python_out={root}",
            f"--grpc_python_out={root}",
            f"--plugin=protoc-gen-mypy={plugins['mypy']}",
            f"--plugin=protoc-gen-mypy_grpc={plugins['mypy_grpc']}",
            f"--mypy_out=quiet:{root}",
            f"--mypy_grpc_out=quiet:{root}",
            str(PACKAGE_PATH / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_FILE} in {PROTO_DIR}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for generated in sorted((root / PACKAGE_PATH).glob("*_pb2*")):
            written.append(Path(shutil.copyfile(generated, out_dir / generated.name)))
    return written


if __name__ == "__main__":
    # ``python -m streamserve.api.grpc.codegen [OUT_DIR]``: the committed folder by default.
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED_DIR):
        print(path)
