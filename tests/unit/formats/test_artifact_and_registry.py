from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamserve.descriptor import ModelType, OutputRule
from streamserve.errors import ConfigurationError, ModelLoadError
from streamserve.formats.artifact import (
    InlineArtifact,
    PathArtifact,
    materialize_directory,
    path_digest,
    resolve_location,
    unpack_archive,
)
from streamserve.formats.base import FactoryContext, apply_output_rule
from streamserve.formats.registry import FactoryRegistry, parse_model_type


def test_locations_must_lie_inside_an_allowed_root(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "wine").mkdir(parents=True)
    model = root / "wine" / "m.onnx"
    model.write_bytes(b"x")
    assert resolve_location(str(model), [root]) == model
    assert resolve_location(model.as_uri(), [root]) == model
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location(str(root / ".." / "elsewhere"), [root])
    with pytest.raises(ModelLoadError, match="outside the allowed model roots"):
        resolve_location(str(model), [])
    with pytest.raises(ModelLoadError, match="scheme 'https' is not supported"):
        resolve_location("https://example.invalid/m.onnx", [root])


def test_symlinks_out_of_a_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s")
    (root / "link").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="outside"):
        resolve_location(str(root / "link"), [root])


def test_directory_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"1")
    before = path_digest(tmp_path / "a")
    (tmp_path / "a" / "f").write_bytes(b"2")
    assert path_digest(tmp_path / "a") != before


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("pack", [_tar, _zip])
def test_archives_unpack_but_never_outside_their_directory(pack, tmp_path: Path) -> None:
    unpack_archive(pack({"saved_model.pb": b"x", "variables/v": b"y"}), tmp_path / "ok")
    assert (tmp_path / "ok" / "variables" / "v").read_bytes() == b"y"
    with pytest.raises(ModelLoadError):
        unpack_archive(pack({"../escaped": b"x"}), tmp_path / "bad")
    assert not (tmp_path / "escaped").exists()


def test_materialize_directory_cleans_up_after_a_bad_archive() -> None:
    with pytest.raises(ModelLoadError, match="not a readable tar or zip archive"):
        materialize_directory(InlineArtifact(b"neither tar nor zip"))


def test_path_artifact_of_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a directory"):
        PathArtifact(tmp_path).read_bytes()


def test_output_rules() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert apply_output_rule(OutputRule.AUTO, scores, model="m").tolist() == [1, 0]
    assert apply_output_rule(OutputRule.ARGMAX, scores, model="m").tolist() == [1, 0]
    assert apply_output_rule(OutputRule.VALUE, scores, model="m").tolist() == scores.tolist()
    assert apply_output_rule(OutputRule.AUTO, np.array([[2.5], [3.5]]), model="m").tolist() == [
        2.5,
        3.5,
    ]


def test_registry_imports_builtin_factories_lazily_and_reports_unknown_types() -> None:
    registry = FactoryRegistry(FactoryContext())
    assert registry.model_types[:4] == [0, 1, 2, 3]
    assert registry.factory_for(ModelType.ONNX).format_name == "onnx"
    with pytest.raises(ModelLoadError, match=r"unknown model type type 77: .*known: TENSORFLOW"):
        registry.factory_for(77)


def test_registry_reports_an_unimportable_factory() -> None:
    registry = FactoryRegistry(FactoryContext(), {5: "streamserve.nowhere:Factory"})
    with pytest.raises(ModelLoadError, match="cannot import model factory"):
        registry.factory_for(5)


def test_entry_point_names_are_model_types() -> None:
    assert parse_model_type("ONNX") == 3
    assert parse_model_type("onnx") == 3
    assert parse_model_type("1000") == 1000
    with pytest.raises(ConfigurationError, match="not a model type"):
        parse_model_type("no-such-type")


def test_a_missing_optional_dependency_names_its_extra() -> None:
    from streamserve.errors import MissingDependencyError
    from streamserve.formats.base import import_optional

    with pytest.raises(MissingDependencyError, match=r"pip install 'streamserve\[magic\]'"):
        import_optional("streamserve_no_such_module", "for magic models", "magic")
    assert import_optional("json", "for tests", "none").dumps([]) == "[]"
