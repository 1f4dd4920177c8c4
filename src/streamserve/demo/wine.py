"""``streamserve demo``: stream the wine CSV while the original models arrive one after another.

The models are published as FLIP-23 ModelDescriptor messages, as the original publisher did:
the TF SavedModel by location, each PMML file and the TF frozen graph inline. Each swap is shown
as it happens; a FLIP-23-style statistics table closes the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamserve.codecs.base import InputRecord
from streamserve.codecs.csv import wine_csv_codec
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.runtime.base import RunSummary
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.streams import CountingSink, MemorySink, MemorySource, ModelQueue
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent, ModelEventKind
from streamserve.serving.stats import ServingInfoSnapshot
from streamserve.settings import BatchSettings, ServingSettings

KEY = "wine"
MODEL_SETTLE_TIMEOUT_S = 120.0
PMML_FILES = (
    "winequalityDecisionTreeClassification.pmml",
    "winequalityDesisionTreeRegression.pmml",
    "winequalityGeneralizedLinearRegressionGamma.pmml",
    "winequalityGeneralizedLinearRegressionGaussian.pmml",
    "winequalityLinearRegression.pmml",
    "winequalityMultilayerPerceptron.pmml",
    "winequalityRandonForrestClassification.pmml",
)


@contextmanager
def wine_data_dir() -> Iterator[Path]:
    """The packaged wine models and data, as a directory on disk."""
    with resources.as_file(resources.files("streamserve.demo") / "data" / "wine") as path:
        yield Path(path)


def wine_descriptors(data_dir: Path) -> list[ModelDescriptor]:
    """The original models in demo order: SavedModel, the seven PMML files, the frozen graph."""
    descriptors = [
        ModelDescriptor(
            name="wine-savedmodel",
            description="TensorFlow SavedModel",
            data_type=KEY,
            model_type=ModelType.TENSORFLOWSAVED,
            location=str(data_dir / "saved" / "1"),
        )
    ]
    descriptors += [
        ModelDescriptor(
            name=file.removesuffix(".pmml"),
            description="PMML",
            data_type=KEY,
            model_type=ModelType.PMML,
            data=(data_dir / file).read_bytes(),
        )
        for file in PMML_FILES
    ]
    descriptors.append(
        ModelDescriptor(
            name="wine-frozen-graph",
            description="TensorFlow frozen graph",
            data_type=KEY,
            model_type=ModelType.TENSORFLOW,
            data=(data_dir / "optimized_WineQuality.pb").read_bytes(),
        )
    )
    return descriptors


@dataclass(frozen=True)
class DemoOptions:
    rate_per_s: float = 4000.0
    seconds_per_model: float = 1.0


def run_demo(console: Console, options: DemoOptions) -> int:
    with wine_data_dir() as data_dir:
        lines = [
            line for line in (data_dir / "winequality_red.csv").read_bytes().splitlines() if line
        ]
        core = ServingCore(ServingSettings(model_roots=[data_dir]))
        try:
            summary = _run(console, core, data_dir, lines, options)
            _print_stats(console, core, summary)
        finally:
            core.close()
    return 0


def _run(
    console: Console, core: ServingCore, data_dir: Path, lines: list[bytes], options: DemoOptions
) -> RunSummary:
    models, data, stop = ModelQueue(), MemorySource(), threading.Event()
    descriptors = wine_descriptors(data_dir)
    started = time.monotonic()

    settled = threading.Event()  # the latest published model swapped in or was rejected

    def show(event: ModelEvent) -> None:
        elapsed = time.monotonic() - started
        if event.kind is ModelEventKind.SWAPPED:
            console.print(
                f"[{elapsed:6.2f}s] [bold green]swap[/] {event.key}: now served by "
                f"[bold]{event.name}[/] ({event.version}), loaded in "
                f"{event.load_duration_s * 1000:.0f} ms; "
                f"{core.counts['records']:,} records scored so far"
            )
        elif event.kind in (ModelEventKind.REJECTED, ModelEventKind.SUPERSEDED):
            console.print(
                f"[{elapsed:6.2f}s] [bold red]{event.kind}[/] {event.name}: "
                f"{event.reason or 'a newer model arrived first'}"
            )
        if event.kind is not ModelEventKind.STAGED:
            settled.set()

    def publish_models() -> None:
        for descriptor in descriptors[1:]:
            settled.wait(MODEL_SETTLE_TIMEOUT_S)
            if stop.wait(options.seconds_per_model):
                return
            settled.clear()
            console.print(f"[{time.monotonic() - started:6.2f}s] publish {descriptor.name}")
            models.publish(encode_descriptor(descriptor), origin=descriptor.name)
        settled.wait(MODEL_SETTLE_TIMEOUT_S)
        stop.wait(options.seconds_per_model)
        stop.set()

    def stream_records() -> None:
        interval = 256 / options.rate_per_s
        position = 0
        while not stop.is_set():
            chunk = [
                InputRecord(
                    lines[(position + i) % len(lines)],
                    position=f"winequality_red.csv:{(position + i) % len(lines) + 1}",
                )
                for i in range(256)
            ]
            position += len(chunk)
            data.put(chunk)
            time.sleep(interval)
        data.close()

    console.print(
        f"streaming the wine data at ~{options.rate_per_s:,.0f} records/s; "
        f"publish {descriptors[0].name} (loading TensorFlow takes a few seconds)"
    )
    models.publish(encode_descriptor(descriptors[0]), origin=descriptors[0].name)
    threads = [
        threading.Thread(target=publish_models, daemon=True),
        threading.Thread(target=stream_records, daemon=True),
    ]
    runtime = EmbeddedRuntime(
        core,
        wine_csv_codec(KEY),
        data,
        CountingSink(),
        MemorySink(),
        BatchSettings(max_records=512, max_delay_ms=5),
        models=models,
        on_event=show,
        freeze_startup=True,  # the demo is a server process: it runs once
    )
    for thread in threads:
        thread.start()
    try:
        return runtime.run()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _print_stats(console: Console, core: ServingCore, summary: RunSummary) -> None:
    console.print(
        f"\n{summary.records:,} records in {summary.elapsed_s:.1f} s: "
        f"{summary.results:,} results, {summary.errors:,} errors, "
        f"{summary.batches:,} batches"
    )
    for slot in core.slots():
        table = Table(
            title=f"Serving statistics of key {slot.key!r} "
            "(µs per record, amortized over each batch)"
        )
        for column in ("name", "description", "since", "invocations", "avg µs", "min µs", "max µs"):
            table.add_column(
                column,
                no_wrap=True,
                justify="right" if column.endswith(("µs", "invocations")) else "left",
            )
        current = [slot.current.stats.snapshot()] if slot.current else []
        for stats in [*slot.served_history(), *current]:
            table.add_row(*_stats_cells(stats))
        console.print(table)


def _stats_cells(stats: ServingInfoSnapshot) -> list[str]:
    since = datetime.fromtimestamp(stats.since).strftime("%H:%M:%S") if stats.since else "-"
    return [
        stats.name,
        stats.description,
        since,
        f"{stats.invocations:,}",
        f"{stats.average_duration_s * 1e6:.2f}",
        f"{stats.min_duration_s * 1e6:.2f}",
        f"{stats.max_duration_s * 1e6:.2f}",
    ]
