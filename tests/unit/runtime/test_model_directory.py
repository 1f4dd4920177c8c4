from __future__ import annotations

import os
from pathlib import Path

from streamserve.descriptor import ModelDescriptor, ModelType, decode_descriptor, encode_descriptor
from streamserve.runtime.model_directory import ModelDirectory


def _touch(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_files_present_at_start_are_taken_at_once_with_key_and_type(tmp_path: Path) -> None:
    _touch(tmp_path / "wine" / "tree.pmml", b"<PMML/>")
    _touch(tmp_path / "beer" / "net.onnx", b"onnx")
    _touch(tmp_path / "wine" / "graph.pb", b"pb")
    (tmp_path / "wine" / "saved").mkdir()
    _touch(tmp_path / "wine" / "saved" / "saved_model.pb", b"sm")
    messages = ModelDirectory(tmp_path).poll()
    described = {m.origin: decode_descriptor(m.payload) for m in messages if m.payload}
    assert {o: (d.data_type, d.model_type, d.name) for o, d in described.items()} == {
        "beer/net.onnx": ("beer", ModelType.ONNX, "net"),
        "wine/graph.pb": ("wine", ModelType.TENSORFLOW, "graph"),
        "wine/saved": ("wine", ModelType.TENSORFLOWSAVED, "saved"),
        "wine/tree.pmml": ("wine", ModelType.PMML, "tree"),
    }
    assert described["wine/saved"].location == str((tmp_path / "wine" / "saved").resolve())


def test_new_files_are_taken_once_they_hold_still_and_changes_are_new_versions(
    tmp_path: Path,
) -> None:
    directory = ModelDirectory(tmp_path)
    assert directory.poll() == []
    model = _touch(tmp_path / "wine" / "m.onnx", b"v1", mtime_ns=1_000)
    assert directory.poll() == [], "a file seen once may still be being written"
    assert [m.origin for m in directory.poll()] == ["wine/m.onnx"]
    assert directory.poll() == []
    _touch(model, b"v2-longer", mtime_ns=2_000)
    directory.poll()
    (changed,) = directory.poll()
    assert decode_descriptor(changed.payload).data == b"v2-longer"


def test_descriptor_files_are_used_as_they_are(tmp_path: Path) -> None:
    payload = encode_descriptor(
        ModelDescriptor(name="n", data_type="k", model_type=3, data=b"x", version="9")
    )
    _touch(tmp_path / "n.desc", payload)
    assert [m.payload for m in ModelDirectory(tmp_path).poll()] == [payload]


def test_what_is_not_a_model_is_reported(tmp_path: Path) -> None:
    _touch(tmp_path / "stray.onnx", b"x")
    _touch(tmp_path / "wine" / "notes.txt", b"x")
    _touch(tmp_path / "wine" / "empty.onnx", b"")
    (tmp_path / "wine" / "folder").mkdir()
    _touch(tmp_path / "wine" / "folder" / "x", b"x")
    problems = {m.origin: m.problem for m in ModelDirectory(tmp_path).poll()}
    assert "folder named by its data type" in problems["stray.onnx"]
    assert "unknown model file type '.txt'" in problems["wine/notes.txt"]
    assert "the file is empty" in problems["wine/empty.onnx"]
    assert "must be a SavedModel" in problems["wine/folder"]
