"""Prometheus metrics read from the live core at scrape time (one registry per app).

A scrape carries the totals and the statistics of every model summed per model type, whatever
the number of keys; per-key series (22 a key) only for the keys that
:class:`~streamserve.settings.MetricsSettings` picks: configured ones and the top N by records
and by errors. So a scrape stays small with 100,000 keys, and costs one pass over the slots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamserve.api.metrics_scan import (
    LATENCY_BOUNDS,
    ROLES,
    FormatTotals,
    RetiredTotals,
    SlotScan,
    scan,
)
from streamserve.serving.core import BATCH_SIZE_BUCKETS, ServingCore
from streamserve.serving.slot import ModelRole, ModelSlot, ServedModel
from streamserve.settings import MetricsSettings

MODEL_LABELS = ["key", "model", "version"]
FORMAT_LABELS = ["model_type"]


class ServingCollector(Collector):
    """Reads the core's counters and every slot's statistics at each scrape, so the numbers are
    those the core and ``/keys`` hold at that moment; only the statistics of models gone since
    are kept between scrapes (:class:`~streamserve.api.metrics_scan.RetiredTotals`)."""

    def __init__(
        self,
        core: ServingCore,
        consumer_lag: Callable[[], int | None] | None = None,
        settings: MetricsSettings | None = None,
    ) -> None:
        self._core = core
        self._consumer_lag = consumer_lag
        self._settings = settings or MetricsSettings()
        self._retired = RetiredTotals()
        self._lock = threading.Lock()  # one scan at a time: they update the retired totals

    def collect(self) -> Iterator[Metric]:
        counts = self._core.counts
        yield from _record_totals(counts)
        yield from self._model_totals(counts)
        yield _batch_sizes(counts)
        lag = self._consumer_lag() if self._consumer_lag is not None else None
        if lag is not None:
            yield GaugeMetricFamily(
                "streamserve_consumer_lag", "Records behind the data partitions' ends", value=lag
            )
        yield from self._scanned(counts)

    def _scanned(self, counts: Mapping[str, int]) -> list[Metric]:
        """The series that need a pass over the slots: per model type, and the chosen keys'."""
        settings = self._settings
        top_keys = 0 if settings.top_keys == "all" else settings.top_keys
        with self._lock:
            slots = self._core.slots()
            found = scan(slots, top_keys, settings.top_error_keys)
            self._retired.fold(found, slots)
            metrics = _format_families(found, self._retired)
            rejected = found.rejected + self._retired.rejected
        chosen = slots if settings.top_keys == "all" else self._chosen_slots(found)
        families = ModelFamilies()
        for slot in chosen:
            families.add(slot)
        return [
            *metrics,
            *_key_totals(len(slots), len(chosen), rejected, counts),
            *families.all(),
        ]

    def _chosen_slots(self, found: SlotScan) -> list[ModelSlot]:
        """The slots that get per-key series: the top keys by records and by errors that the
        scan found, and the configured keys."""
        top = [*found.by_records.slots(), *found.by_errors.slots()]
        chosen = {slot.key: slot for slot in top}
        for key in self._settings.keys:
            slot = self._core.find_slot(key)
            if slot is not None:
                chosen.setdefault(key, slot)
        return [chosen[key] for key in sorted(chosen)]

    def _model_totals(self, counts: Mapping[str, int]) -> Iterator[Metric]:
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
        yield CounterMetricFamily(
            "streamserve_model_calls_overran",
            "Model scoring calls that overran serving.scoring_deadline_s (each left running)",
            value=counts.get("model_calls_overran", 0),
        )
        yield CounterMetricFamily(
            "streamserve_artifact_cache_failures",
            "Times the artifact cache could not be written; loads went on without it",
            value=self._core.artifact_cache_failures,
        )
        yield GaugeMetricFamily(
            "streamserve_overrunning_model_calls",
            "Model calls (scoring, loading, probes) still running past their time limit",
            value=self._core.overrunning_calls,
        )


def _format_families(found: SlotScan, retired: RetiredTotals) -> list[Metric]:
    """The statistics of every model, held now or gone, summed per model type."""
    results = CounterMetricFamily(
        "streamserve_format_results", "Records scored by models of a type", labels=FORMAT_LABELS
    )
    errors = CounterMetricFamily(
        "streamserve_format_errors",
        "Records of keys that got an error record while a model of the type served them",
        labels=FORMAT_LABELS,
    )
    latency = HistogramMetricFamily(
        "streamserve_format_scoring_batch_seconds",
        "Time to score one micro-batch with a model of the type",
        labels=FORMAT_LABELS,
    )
    swaps = CounterMetricFamily(
        "streamserve_format_swaps",
        "Models of a type that became current (a swap, or a key's first model)",
        labels=FORMAT_LABELS,
    )
    held = GaugeMetricFamily(
        "streamserve_models", "Models held now, by type and role", labels=["model_type", "role"]
    )
    for model_type in sorted(found.formats.keys() | retired.formats.keys()):
        now = found.formats.get(model_type) or FormatTotals()
        totals = FormatTotals()
        totals.include(now)
        if model_type in retired.formats:
            totals.include(retired.formats[model_type])
        labels = [model_type]
        results.add_metric(labels, totals.results)
        errors.add_metric(labels, totals.errors)
        swaps.add_metric(labels, totals.swaps)
        cumulative = accumulate(totals.latency_counts())
        buckets = list(zip(LATENCY_BOUNDS, cumulative, strict=True))
        latency.add_metric(labels, buckets, sum_value=totals.duration_s)
        for role, count in zip(ROLES, now.held, strict=True):
            held.add_metric([model_type, role.value], count)
    return [results, errors, latency, swaps, held]


def _key_totals(
    keys: int, chosen: int, rejected: int, counts: Mapping[str, int]
) -> Iterator[Metric]:
    yield GaugeMetricFamily("streamserve_keys", "Keys with a model slot", value=keys)
    yield GaugeMetricFamily(
        "streamserve_metrics_keys",
        "Keys with per-key series in this scrape (api.metrics)",
        value=chosen,
    )
    yield CounterMetricFamily(
        "streamserve_rejected_models",
        "Models rejected or quarantined, over every key that has or had a model slot",
        value=rejected,
    )
    yield CounterMetricFamily(
        "streamserve_quarantined_models",
        "Models taken out of service because they kept failing",
        value=counts.get("model_quarantines", 0),
    )


def _record_totals(counts: Mapping[str, int]) -> Iterator[Metric]:
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


def _batch_sizes(counts: Mapping[str, int]) -> Metric:
    sizes = HistogramMetricFamily("streamserve_batch_size", "Records per micro-batch")
    bounds = [str(b) for b in BATCH_SIZE_BUCKETS[:-1]] + ["+Inf"]
    cumulative = accumulate(counts.get(f"batch_size_le.{b}", 0) for b in BATCH_SIZE_BUCKETS)
    sizes.add_metric(
        [], list(zip(bounds, cumulative, strict=True)), sum_value=counts.get("records", 0)
    )
    return sizes


class ModelFamilies:
    """The per-key and per-model metric families of one scrape, for the keys it was given."""

    def __init__(self) -> None:
        self.results = CounterMetricFamily(
            "streamserve_model_results", "Records scored by a model", labels=MODEL_LABELS
        )
        self.errors = CounterMetricFamily(
            "streamserve_model_errors",
            "Records of a model's key that got an error record",
            labels=MODEL_LABELS,
        )
        self.latency = HistogramMetricFamily(
            "streamserve_scoring_batch_seconds",
            "Time to score one micro-batch",
            labels=MODEL_LABELS,
        )
        self.loads = GaugeMetricFamily(
            "streamserve_model_load_seconds",
            "How long loading and validating the model took",
            labels=MODEL_LABELS,
        )
        self.swaps = GaugeMetricFamily(
            "streamserve_model_swap_seconds",
            "From the model's arrival to its first scored batch",
            labels=MODEL_LABELS,
        )
        self._key_families()

    def _key_families(self) -> None:
        self.rejections = CounterMetricFamily(
            "streamserve_model_rejections", "Models rejected for a key", labels=["key"]
        )
        self.quarantines = CounterMetricFamily(
            "streamserve_model_quarantines",
            "Models taken out of service because they kept failing, by key",
            labels=["key"],
        )

    def add(self, slot: ModelSlot) -> None:
        self.rejections.add_metric([slot.key], slot.rejected_total)
        self.quarantines.add_metric([slot.key], slot.quarantined_total)
        for served in _series_models(slot):
            self._add_model(slot.key, served)

    def _add_model(self, key: str, served: ServedModel) -> None:
        stats = served.stats.snapshot()
        labels = [key, stats.name, stats.version]
        self.results.add_metric(labels, stats.invocations)
        self.errors.add_metric(labels, stats.errors)
        cumulative = accumulate(stats.batch_latency_counts)
        self.latency.add_metric(
            labels,
            list(zip(LATENCY_BOUNDS, cumulative, strict=True)),
            sum_value=stats.total_duration_s,
        )
        self.loads.add_metric(labels, served.load_duration_s)
        if served.swap_delay_s is not None:
            identity = served.identity
            self.swaps.add_metric([key, identity.name, identity.version], served.swap_delay_s)

    def all(self) -> tuple[Metric, ...]:
        return (
            self.results,
            self.errors,
            self.latency,
            self.loads,
            self.swaps,
            self.rejections,
            self.quarantines,
        )


def _series_models(slot: ModelSlot) -> list[ServedModel]:
    """The models of a slot that have metric series: every one but a staged model (it scored
    nothing yet), once per (name, version): a republished model is current and previous with
    the same labels, and two series of one label set would break the exposition."""
    models: dict[tuple[str, str], ServedModel] = {}
    for role, served in slot.models():  # the current model first: its series wins
        if role is not ModelRole.STAGED:
            models.setdefault((served.identity.name, served.identity.version), served)
    return list(models.values())


def metrics_registry(
    core: ServingCore,
    consumer_lag: Callable[[], int | None] | None = None,
    settings: MetricsSettings | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingCollector(core, consumer_lag, settings))
    return registry
