"""Prometheus metrics read from the live core at scrape time (one registry per app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamserve.serving.core import BATCH_SIZE_BUCKETS, ServingCore
from streamserve.serving.slot import ServedModel
from streamserve.serving.stats import LATENCY_BUCKETS_S

MODEL_LABELS = ["key", "model", "version"]


class ServingCollector(Collector):
    def __init__(
        self, core: ServingCore, consumer_lag: Callable[[], int | None] | None = None
    ) -> None:
        self._core = core
        self._consumer_lag = consumer_lag

    def collect(self) -> Iterator[Metric]:
        yield from self._totals()
        results = CounterMetricFamily(
            "streamserve_model_results", "Records scored by a model", labels=MODEL_LABELS
        )
        errors = CounterMetricFamily(
            "streamserve_model_errors",
            "Records of a model's key that got an error record",
            labels=MODEL_LABELS,
        )
        latency = HistogramMetricFamily(
            "streamserve_scoring_batch_seconds",
            "Time to score one micro-batch",
            labels=MODEL_LABELS,
        )
        loads = GaugeMetricFamily(
            "streamserve_model_load_seconds",
            "How long loading and validating the model took",
            labels=MODEL_LABELS,
        )
        swaps = GaugeMetricFamily(
            "streamserve_model_swap_seconds",
            "From the model's arrival to its first scored batch",
            labels=MODEL_LABELS,
        )
        rejections = CounterMetricFamily(
            "streamserve_model_rejections", "Models rejected for a key", labels=["key"]
        )
        quarantines = CounterMetricFamily(
            "streamserve_model_quarantines",
            "Models taken out of service because they kept failing, by key",
            labels=["key"],
        )
        for slot in self._core.slots():
            rejections.add_metric([slot.key], slot.rejected_total)
            quarantines.add_metric([slot.key], slot.quarantined_total)
            current, previous = slot.current, slot.previous
            if current is not None and previous is not None and _same_labels(current, previous):
                previous = None  # one model republished: one series
            for served in (current, previous):
                if served is not None:
                    _add_model(served, slot.key, results, errors, latency, loads)
                if served is not None and served.swap_delay_s is not None:
                    identity = served.identity
                    labels = [slot.key, identity.name, identity.version]
                    swaps.add_metric(labels, served.swap_delay_s)
        yield from (results, errors, latency, loads, swaps, rejections, quarantines)

    def _totals(self) -> Iterator[Metric]:
        counts = self._core.counts
        for name, help_text in (
            ("records", "Input records"),
            ("results", "Result records"),
            ("errors", "Error records"),
            ("batches", "Micro-batches"),
        ):
            yield CounterMetricFamily(f"streamserve_{name}", help_text, value=counts.get(name, 0))
        by_kind = CounterMetricFamily(
            "streamserve_record_errors", "Error records by kind", labels=["kind"]
        )
        for name, value in sorted(counts.items()):
            if name.startswith("errors."):
                by_kind.add_metric([name.removeprefix("errors.")], value)
        yield by_kind
        yield CounterMetricFamily(
            "streamserve_model_messages",
            "Model messages received",
            value=counts.get("model_messages", 0) + counts.get("model_messages_rejected", 0),
        )
        yield GaugeMetricFamily(
            "streamserve_model_loads_pending", "Models loading now", value=self._core.loads_pending
        )
        live = self._core.live_models
        yield GaugeMetricFamily(
            "streamserve_live_models",
            "Model instances in memory (with a live-model budget; else not tracked: 0)",
            value=live.live,
        )
        yield CounterMetricFamily(
            "streamserve_model_evictions",
            "Idle model instances evicted by the live-model budget",
            value=live.evictions,
        )
        sizes = HistogramMetricFamily("streamserve_batch_size", "Records per micro-batch")
        bounds = [str(b) for b in BATCH_SIZE_BUCKETS[:-1]] + ["+Inf"]
        cumulative = accumulate(counts.get(f"batch_size_le.{b}", 0) for b in BATCH_SIZE_BUCKETS)
        sizes.add_metric(
            [], list(zip(bounds, cumulative, strict=True)), sum_value=counts.get("records", 0)
        )
        yield sizes
        lag = self._consumer_lag() if self._consumer_lag is not None else None
        if lag is not None:
            yield GaugeMetricFamily(
                "streamserve_consumer_lag", "Records behind the data partitions' ends", value=lag
            )


def _same_labels(one: ServedModel, other: ServedModel) -> bool:
    return (one.identity.name, one.identity.version) == (
        other.identity.name,
        other.identity.version,
    )


def _add_model(
    served: ServedModel,
    key: str,
    results: CounterMetricFamily,
    errors: CounterMetricFamily,
    latency: HistogramMetricFamily,
    loads: GaugeMetricFamily,
) -> None:
    stats = served.stats.snapshot()
    labels = [key, stats.name, stats.version]
    results.add_metric(labels, stats.invocations)
    errors.add_metric(labels, stats.errors)
    cumulative = list(accumulate(stats.batch_latency_counts))
    bounds = [repr(bound) for bound in LATENCY_BUCKETS_S] + ["+Inf"]
    latency.add_metric(
        labels, list(zip(bounds, cumulative, strict=True)), sum_value=stats.total_duration_s
    )
    loads.add_metric(labels, served.load_duration_s)


def metrics_registry(
    core: ServingCore, consumer_lag: Callable[[], int | None] | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingCollector(core, consumer_lag))
    return registry
