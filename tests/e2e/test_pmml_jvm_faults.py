"""The JVM that runs PMML models cannot start: PMML models are rejected with the cause and the fix,
once per process (never retried), and ONNX models serve in the same process.

Each case runs ``streamserve serve`` as an operator would, in an environment that breaks the JVM
start for real: a JVM option it refuses, a heap it cannot have (on which HotSpot exits the whole
process: the start is tried in a child process first), and no Java installation at all (a mount
namespace with an empty tmpfs over the Java homes, tests/mount_faults.py). A JVM that failed, or
started, stays so for its process: hence one subprocess per case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from mount_faults import Mount, in_mount_namespace, require_mount_namespaces

from builders import onnx_constant, wine_json_lines, wine_rows

pytestmark = pytest.mark.slow

STREAMSERVE = [sys.executable, "-m", "streamserve"]
PMML_KEYS = {
    "wine": "winequalityDecisionTreeClassification.pmml",
    "red": "winequalityLinearRegression.pmml",
}

# Each fault, with the words of its cause and of its fix that the rejection must carry.
FAULTS = {
    "refused-option": (
        "-XX:+NoSuchOption",
        "Unrecognized VM option 'NoSuchOption'",
        "JAVA_TOOL_OPTIONS",
    ),
    "impossible-heap": ("-Xmx1k", "Too small maximum heap", "JAVA_TOOL_OPTIONS"),
    "no-java": (None, "no Java installation found", "install Java 17, or set JAVA_HOME"),
}


def _java_homes() -> list[Path]:
    """The Java installations JPype would find: the one it picks, and the usual places."""
    import jpype

    picked = Path(jpype.getDefaultJVMPath()).resolve().parents[2]  # HOME/lib/server/libjvm.so
    usual = [Path(p) for p in ("/usr/lib/jvm", "/usr/java", "/opt/sun") if Path(p).is_dir()]
    return [picked, *(home for home in usual if not picked.is_relative_to(home))]


def _models_and_data(tmp_path: Path, wine_dir: Path) -> tuple[Path, Path]:
    models = tmp_path / "models"
    for key, file in PMML_KEYS.items():
        (models / key).mkdir(parents=True)
        (models / key / file).write_bytes((wine_dir / file).read_bytes())
    (models / "beer").mkdir()
    (models / "beer" / "constant.onnx").write_bytes(onnx_constant(11, 7.0))
    rows = wine_rows(wine_dir)[:20]
    lines = (
        wine_json_lines(rows) + wine_json_lines(rows, key="red") + wine_json_lines(rows, key="beer")
    )
    data = tmp_path / "records.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    return models, data


@pytest.mark.parametrize("fault", list(FAULTS))
def test_pmml_models_are_rejected_with_the_cause_and_onnx_models_serve(
    fault: str, tmp_path: Path, wine_dir: Path
) -> None:
    option, cause, fix = FAULTS[fault]
    models, data = _models_and_data(tmp_path, wine_dir)
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    command = [
        *STREAMSERVE,
        "serve",
        *("--models", str(models), "--data", str(data), "--codec", "json"),
        *("--results", str(results), "--errors", str(errors)),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "JAVA_TOOL_OPTIONS")}
    if option is not None:
        env["JAVA_TOOL_OPTIONS"] = option
    else:
        require_mount_namespaces(tmp_path)
        command = in_mount_namespace(command, [Mount(home) for home in _java_homes()])

    done = subprocess.run(command, capture_output=True, env=env, timeout=300, check=False)

    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    scored = [orjson.loads(line) for line in results.read_bytes().splitlines()]
    failed = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [(r["key"], r["model"], r["value"]) for r in scored] == [("beer", "constant", 7.0)] * 20
    rejected = {e["model"]: e["reason"] for e in failed if e["kind"] == "model_rejected"}
    assert sorted(rejected) == sorted(Path(file).stem for file in PMML_KEYS.values())
    for name, reason in rejected.items():
        assert f"PMML model {name!r} rejected" in reason
        assert "the Java VM that runs PMML models cannot start" in reason
        assert cause in reason
        assert fix in reason
        assert "models of other formats are served" in reason
    no_model = [e["key"] for e in failed if e["kind"] == "no_model"]
    assert sorted(no_model) == ["red"] * 20 + ["wine"] * 20


# Three PMML models, one after another, and an ONNX model, in one embedded core.
_ONE_PROCESS = """
import sys
from pathlib import Path
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.pmml import jvm_state
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings

pmml, onnx = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
with ServingCore(ServingSettings()) as core:
    for n in range(3):
        descriptor = ModelDescriptor(f"pmml-{n}", f"k{n}", ModelType.PMML, data=pmml)
        core.submit_model(descriptor)
        assert core.wait_for_models(timeout_s=120)
    core.submit_model(ModelDescriptor("constant", "beer", ModelType.ONNX, data=onnx))
    assert core.wait_for_models(timeout_s=120)
    state = jvm_state()
    print(state.attempts, state.started, [slot.key for slot in core.slots()])
"""


def test_a_failed_jvm_start_is_remembered_not_retried_per_model(
    tmp_path: Path, wine_dir: Path
) -> None:
    pmml = wine_dir / "winequalityDecisionTreeClassification.pmml"
    onnx = tmp_path / "constant.onnx"
    onnx.write_bytes(onnx_constant(11, 7.0))
    env = {**os.environ, "JAVA_TOOL_OPTIONS": "-Xmx1k"}

    done = subprocess.run(
        [sys.executable, "-c", _ONE_PROCESS, str(pmml), str(onnx)],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode().split(maxsplit=2) == ["1", "False", "['beer']\n"]
