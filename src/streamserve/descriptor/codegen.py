"""Regenerates the Python code of the descriptor ``.proto`` files (a development tool).

Run ``python -m streamserve.descriptor.codegen`` after editing a ``.proto`` file; a test checks
that the committed code matches what this produces. Needs the ``dev`` extra (grpcio-tools and
mypy-protobuf).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent
GENERATED_DIR = PROTO_DIR / "_generated"
PROTO_FILES = ("modeldescriptor.proto", "winerecord.proto")


def generate(out_dir: Path) -> list[Path]:
    """Writes ``*_pb2.py`` and ``*_pb2.pyi`` for every descriptor proto into ``out_dir``."""
    from grpc_tools import protoc  # dev-only dependency, imported when asked for

    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise RuntimeError(
            "protoc-gen-mypy not found beside the interpreter: install the dev extra"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--mypy_out=quiet:{out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILES} in {PROTO_DIR}")
    return sorted(p for p in out_dir.iterdir() if p.suffix in {".py", ".pyi"})


if __name__ == "__main__":
    # ``python -m streamserve.descriptor.codegen [OUT_DIR]``: the committed folder by default.
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED_DIR):
        print(path)
