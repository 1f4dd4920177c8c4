"""Coverage-guided (atheris/libFuzzer) harnesses of the fuzz targets, for runs of hours.

Run through ``bash scripts/fuzz.sh TARGET [seconds]``; directly::

    .venv/bin/python tests/fuzz/atheris_targets.py TARGET CORPUS_DIR [libFuzzer flags]

Each harness checks the invariant of its hypothesis target (the checks are imported from the
test modules) and seeds an empty corpus with valid inputs. A violation raises, and libFuzzer
writes the input to ``-artifact_prefix``; a native crash is caught the same way.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

with atheris.instrument_imports(include=["streamserve"]):
    from streamserve.codecs.base import InputRecord
    from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
    from streamserve.runtime.streams import write_length_delimited

import numpy as np  # noqa: E402
import test_fuzz_codecs as codecs_target  # noqa: E402
import test_fuzz_descriptor as descriptor_target  # noqa: E402
import test_fuzz_framing as framing_target  # noqa: E402
import test_fuzz_model_loads as loads_target  # noqa: E402
import test_fuzz_runtime as runtime_target  # noqa: E402

from builders import onnx_linear, wine_rows  # noqa: E402
from streamserve.codecs.protobuf import encode_wine_record  # noqa: E402
from streamserve.demo.wine import wine_data_dir  # noqa: E402
from streamserve.formats.base import FactoryContext  # noqa: E402
from streamserve.formats.registry import FactoryRegistry  # noqa: E402
from streamserve.serving.core import ServingCore  # noqa: E402
from streamserve.settings import ServingSettings  # noqa: E402
from streamserve.testing import records_from, serve_records  # noqa: E402

RECORD_SEPARATOR = b"\x1e"  # one fuzz input holds several records, split here


def descriptor(data: bytes) -> None:
    descriptor_target.check_decodes_or_rejects(data)


def codecs(data: bytes) -> None:
    records = [InputRecord(part, None, "") for part in data.split(RECORD_SEPARATOR)[:8]]
    for codec in codecs_target.CODECS.values():
        batch = codec.decode(records)
        codecs_target.check_batch(batch, records)
        for index, record in enumerate(records):
            codecs_target.decoded_alike(codec.decode([record]), batch, index)


def framing(data: bytes) -> None:
    messages, error, stream = framing_target.read_all(data)
    expected, clean = framing_target.reference_frames(data)
    assert messages == expected
    assert (error is None) == clean
    assert stream.largest_read <= framing_target.MAX_READ_BYTES


class Runtime:
    """The runtime target: the first byte picks the codec, the rest are records."""

    def __init__(self) -> None:
        self.core = ServingCore(ServingSettings())
        good = runtime_target.onnx_descriptor(
            "good",
            runtime_target.onnx_named_linear(
                list(runtime_target.WINE_FEATURES), runtime_target.WEIGHTS, runtime_target.BIAS
            ),
        )
        json_codec = runtime_target.CODECS["json"]
        serve_records(
            self.core, json_codec, records_from([runtime_target.GOOD["json"]]), models=[good]
        )

    def __call__(self, data: bytes) -> None:
        name = "json" if not data or data[0] % 2 == 0 else "wine-csv"
        payloads = [p for p in data[1:].split(RECORD_SEPARATOR)[:16]]
        records = records_from([*payloads, runtime_target.GOOD[name]], prefix="fuzz")
        run = serve_records(self.core, runtime_target.CODECS[name], records)
        positions = sorted(o["position"] for o in [*run.results, *run.errors])
        assert positions == sorted(r.position for r in records)
        last = [r for r in run.results if r["position"] == records[-1].position]
        assert len(last) == 1
        assert last[0]["model"] == "good"
        assert abs(last[0]["value"] - runtime_target.EXPECTED) < 1e-4 * runtime_target.EXPECTED


class ModelLoad:
    """One model factory's load on mutants of a real model (the seed)."""

    def __init__(self, name: str) -> None:
        with wine_data_dir() as wine_dir:
            self.matrix = wine_rows(wine_dir)
            source, _ = loads_target.MODELS[name]
            self.model_type, self.seed, self.options = source(wine_dir, self.matrix)
        self.registry = FactoryRegistry(FactoryContext())

    def __call__(self, data: bytes) -> None:
        loads_target.load_scores_or_rejects(
            self.registry, self.model_type, data, self.options, self.matrix
        )


def seeds(target: str) -> list[bytes]:
    wine = runtime_target.GOOD
    if target == "descriptor":
        model = ModelDescriptor(name="m", data_type="wine", model_type=ModelType.ONNX, data=b"x")
        return [encode_descriptor(model), onnx_linear(np.ones(11), 0.0)]
    if target in ("codecs", "runtime"):
        protobuf = encode_wine_record(runtime_target.WINE_ROW)
        return [b"\x00" + RECORD_SEPARATOR.join([wine["json"], wine["wine-csv"], protobuf])]
    if target == "framing":
        stream = io.BytesIO()
        write_length_delimited([encode_wine_record(runtime_target.WINE_ROW)] * 3, stream)
        return [stream.getvalue()]
    return [ModelLoad(target.removeprefix("model-")).seed]


def harness(target: str) -> Callable[[bytes], None]:
    simple: dict[str, Callable[[bytes], None]] = {
        "descriptor": descriptor,
        "codecs": codecs,
        "framing": framing,
    }
    if target in simple:
        return simple[target]
    if target == "runtime":
        return Runtime()
    if target.removeprefix("model-") in loads_target.MODELS:
        return ModelLoad(target.removeprefix("model-"))
    names = [*simple, "runtime", *(f"model-{name}" for name in loads_target.MODELS)]
    raise SystemExit(f"unknown target {target!r}; one of: {', '.join(names)}")


def main() -> None:
    target, corpus = sys.argv[1], Path(sys.argv[2])
    test_one = harness(target)
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for number, seed in enumerate(seeds(target)):
            (corpus / f"seed-{number}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
