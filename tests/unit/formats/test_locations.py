"""A descriptor's location is read only if it is a local path or file:// URL that resolves,
``..`` and symbolic links followed, inside a model root; the refusal names what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import resolve_location


@pytest.fixture
def root(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    (models / "wine" / "m.onnx").write_bytes(b"model")
    (tmp_path / "secret.onnx").write_bytes(b"not a model to serve")
    return models


def test_paths_and_file_urls_inside_a_root_resolve(root: Path) -> None:
    model = root / "wine" / "m.onnx"
    assert resolve_location(str(model), [root]) == model
    assert resolve_location(model.as_uri(), [root]) == model
    assert resolve_location(f"file://localhost{model}", [root]) == model
    assert resolve_location(str(root / "wine" / ".." / "wine" / "m.onnx"), [root]) == model


@pytest.mark.parametrize(
    "location",
    [
        "https://models.example/m.onnx",
        "http://127.0.0.1/m.onnx",
        "s3://bucket/m.onnx",
        "ftp://host/m.onnx",
        "data:application/octet-stream;base64,AAAA",
    ],
)
def test_remote_schemes_are_refused_naming_what_is_allowed(root: Path, location: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        resolve_location(location, [root])
    assert "not supported" in str(refused.value)
    assert "local paths and file:// URLs inside serving.model_roots" in str(refused.value)


def test_a_file_url_naming_another_host_is_refused(root: Path) -> None:
    with pytest.raises(ModelLoadError, match="no host, query or fragment"):
        resolve_location(f"file://fileserver{root}/wine/m.onnx", [root])


def test_dot_dot_out_of_a_root_is_refused(root: Path) -> None:
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location(str(root / ".." / "secret.onnx"), [root])
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location((root / "wine" / ".." / ".." / "secret.onnx").as_uri(), [root])


def test_a_symlink_out_of_a_root_is_refused(root: Path) -> None:
    (root / "wine" / "link.onnx").symlink_to(root.parent / "secret.onnx")
    (root / "elsewhere").symlink_to(root.parent, target_is_directory=True)
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location(str(root / "wine" / "link.onnx"), [root])
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location(str(root / "elsewhere" / "secret.onnx"), [root])


def test_a_symlink_inside_a_root_is_followed(root: Path) -> None:
    (root / "wine" / "current.onnx").symlink_to(root / "wine" / "m.onnx")
    assert resolve_location(str(root / "wine" / "current.onnx"), [root]) == root / "wine" / "m.onnx"


def test_special_files_and_nul_characters_are_refused(root: Path) -> None:
    os.mkfifo(root / "wine" / "pipe.onnx")
    with pytest.raises(ModelLoadError, match="neither a regular file nor a folder"):
        resolve_location(str(root / "wine" / "pipe.onnx"), [root])
    with pytest.raises(ModelLoadError, match="NUL character"):
        resolve_location(f"{root}/wine/m.onnx\0.txt", [root])


def test_no_root_means_no_location(root: Path) -> None:
    with pytest.raises(ModelLoadError, match="none configured"):
        resolve_location(str(root / "wine" / "m.onnx"), [])
