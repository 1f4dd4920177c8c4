"""Scenario 5: many keys, each with its own small model (ONNX, one layer over 11 features), in
the embedded core: load time, RSS and records/s with 1,000 and 10,000 keys, unbounded and under
a live-model budget of a tenth of the keys. Each size runs in its own process, so its RSS is its
own; the baselines are the same process before any model (RSS) and one key serving the same
number of records (records/s)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import orjson

from benchmarks.common import Row, Sizes, WineData, rate
from benchmarks.models import tiny_linear_onnx

SCENARIO = "5 many models"
BATCH = 1024


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for keys in sizes.model_counts:
        for budget in (None, max(keys // 10, 1)):
            measured = _in_child(keys, sizes.records_per_key, budget)
            label = f"{keys:,} keys" + (f", budget {budget:,} live" if budget else "")
            rss_target = "≤ 4 GiB, every key served" if keys >= 10_000 else "every key served"
            served_all = measured["keys_served"] == keys and measured["errors"] == 0
            rows += [
                Row(
                    SCENARIO,
                    f"{label}: RSS",
                    measured["rss_mib"],
                    "MiB",
                    "before any model",
                    measured["rss_before_mib"],
                    rss_target,
                    served_all and measured["rss_mib"] <= 4096,
                    {
                        "load_s": measured["load_s"],
                        "keys_served": measured["keys_served"],
                        "reloads": measured["reloads"],
                        "evictions": measured["evictions"],
                    },
                ),
                Row(
                    SCENARIO,
                    f"{label}: records/s, records spread over every key",
                    measured["rate"],
                    "rec/s",
                    "one key, same records",
                    measured["one_key_rate"],
                    details={"records": measured["records"], "load_s": measured["load_s"]},
                ),
            ]
    return rows


def _in_child(keys: int, per_key: int, budget: int | None) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.many_models", str(keys), str(per_key), str(budget or 0)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"many-models child failed: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(keys: int, per_key: int, budget: int | None) -> dict[str, float]:
    from streamserve.codecs.base import InputRecord
    from streamserve.codecs.json import JsonCodec
    from streamserve.descriptor import ModelDescriptor, ModelType
    from streamserve.serving.core import ServingCore
    from streamserve.settings import ServingSettings

    rng = np.random.default_rng(1)
    codec = JsonCodec()
    core = ServingCore(ServingSettings(max_live_models=budget))
    codec.decode([InputRecord(b'{"dataType": "k0", "features": [1]}')])  # imports, warmed
    rss_before = _rss_mib()
    descriptors = [
        ModelDescriptor(
            name=f"m{key}",
            data_type=f"k{key}",
            model_type=ModelType.ONNX,
            data=tiny_linear_onnx(rng.normal(size=11), float(key)),
        )
        for key in range(keys)
    ]
    started = time.perf_counter()
    for descriptor in descriptors:
        core.submit_model(descriptor)
    if not core.wait_for_models(3600):
        raise RuntimeError("models did not load")
    load_s = time.perf_counter() - started
    features = rng.normal(size=(keys * per_key, 11)).round(4)
    order = rng.permutation(np.repeat(np.arange(keys), per_key))

    def records(key_of: np.ndarray) -> list[InputRecord]:
        return [
            InputRecord(orjson.dumps({"dataType": f"k{key}", "features": row.tolist()}))
            for key, row in zip(key_of.tolist(), features, strict=True)
        ]

    def serve(batch_records: list[InputRecord]) -> tuple[float, set[str], int]:
        served: set[str] = set()
        errors = 0
        started = time.perf_counter()
        for start in range(0, len(batch_records), BATCH):
            outcome = core.score(codec.decode(batch_records[start : start + BATCH]))
            served.update(group.key for group in outcome.groups)
            errors += outcome.error_count
        return rate(len(batch_records), time.perf_counter() - started), served, errors

    spread_rate, served, errors = serve(records(order))
    rss_served = _rss_mib()  # every key served
    one_key_rate, _, _ = serve(records(np.zeros(len(order), dtype=int)))
    reloads = sum(slot.current.reloads for slot in core.slots() if slot.current is not None)
    result = {
        "keys": keys,
        "records": len(order),
        "load_s": load_s,
        "rss_before_mib": rss_before,
        "rss_mib": rss_served,
        "rate": spread_rate,
        "one_key_rate": one_key_rate,
        "keys_served": len(served),
        "errors": errors,
        "reloads": reloads,
        "evictions": core.live_models.evictions,
    }
    core.close()
    return result


if __name__ == "__main__":
    keys, per_key, budget = (int(arg) for arg in sys.argv[1:4])
    print(json.dumps(measure(keys, per_key, budget or None)))
