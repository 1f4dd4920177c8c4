"""The soak's samples as one PNG: a panel per figure over the run's time, warm-up shaded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.soak.verdict import Sample

PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "memory (MiB)",
        (("rss_mib", "RSS"), ("jvm_heap_mib", "JVM heap"), ("jvm_old_mib", "JVM old")),
    ),
    ("latency (ms)", (("p50_ms", "p50"), ("p99_ms", "p99"), ("oldest_wait_ms", "oldest wait"))),
    ("open", (("fds", "file descriptors"), ("threads", "threads"))),
    ("throughput (records/s)", (("throughput_rps", "outputs read"),)),
    ("consumer lag (records)", (("consumer_lag", "lag"),)),
    (
        "churn (cumulative)",
        (
            ("swaps_published", "models published"),
            ("swaps_served", "swaps served"),
            ("rollbacks", "rollbacks"),
            ("v2_requests", "V2"),
        ),
    ),
)


def draw(samples: Sequence[Sample], warmup_s: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(3, 2, figsize=(13, 10), sharex=True)
    times = [sample["elapsed_s"] / 60 for sample in samples]
    for axis, (label, series) in zip(axes.flat, PANELS, strict=True):
        for column, name in series:
            values = [sample[column] for sample in samples]
            if not all(math.isnan(value) for value in values):
                axis.plot(times, values, marker=".", label=name)
        axis.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize="small")
    for axis in axes[-1]:
        axis.set_xlabel("minutes")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
