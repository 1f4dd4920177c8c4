"""``streamserve demo``: stream the wine CSV while the original models arrive one after another.

The models are published as FLIP-23 ModelDescriptor messages, as the original publisher did:
the TF SavedModel by location, each PMML file and the TF frozen graph inline. What it prints is
the swaps as they happen and a FLIP-23-style statistics table closing the run; libraries' own
lines stay out (the CLI's logging, :mod:`streamserve.logs`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape
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
STOP_CHECK_S = 0.1  # waits look at a stop request this often
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
    # Serve the HTTP API (the dashboard) on this port, and stream on after the last model
    # until stopped, so that there is something to look at.
    http_port: int | None = None


# Starts a server of the core (the HTTP API) for the demo's run; yields its URL.
ApiStarter = Callable[[ServingCore, Callable[[], bool]], AbstractContextManager[str]]


def run_demo(
    console: Console,
    options: DemoOptions,
    *,
    stop: threading.Event | None = None,
    start_api: ApiStarter | None = None,
) -> int:
    """Runs the demo to its end (or until ``stop`` is set): the swaps as they happen, then the
    statistics table and where to look next. With ``start_api``, the core is served meanwhile."""
    with wine_data_dir() as data_dir:
        lines = [
            line for line in (data_dir / "winequality_red.csv").read_bytes().splitlines() if line
        ]
        with ServingCore(ServingSettings(model_roots=[data_dir])) as core:
            demo = _WineDemo(console, core, data_dir, lines, options, stop or threading.Event())
            with start_api(core, demo.ready) if start_api else nullcontext("") as url:
                summary = demo.run(url)
            _print_stats(console, core, summary)
    _print_next_steps(console, options)
    return 0


class _WineDemo:
    """One run: a thread streams the records, another publishes the models one after another
    (each once the previous one swapped in or was rejected), and the embedded runtime serves."""

    def __init__(
        self,
        console: Console,
        core: ServingCore,
        data_dir: Path,
        lines: list[bytes],
        options: DemoOptions,
        stop: threading.Event,
    ) -> None:
        self._console = console
        self._core = core
        self._lines = lines
        self._options = options
        self._stop = stop  # set by a signal: end now
        self._finished = threading.Event()  # every model published and settled
        self._settled = threading.Event()  # the latest model swapped in or was rejected
        self._descriptors = wine_descriptors(data_dir)
        self._models, self._data = ModelQueue(), MemorySource()
        self._started = time.monotonic()
        self._runtime = EmbeddedRuntime(
            core,
            wine_csv_codec(KEY),
            self._data,
            CountingSink(),
            MemorySink(),
            BatchSettings(max_records=512, max_delay_ms=5),
            models=self._models,
            on_event=self._show,
            freeze_startup=True,  # the demo is a server process: it runs once
        )

    def ready(self) -> bool:
        return self._runtime.ready.is_set()

    def run(self, url: str) -> RunSummary:
        options = self._options
        self._console.print(
            f"Streaming the wine data at ~{options.rate_per_s:,.0f} records/s while "
            f"{len(self._descriptors)} models arrive one after another (loading TensorFlow "
            "takes a few seconds)"
        )
        if url:
            self._console.print(
                f"Watch it at {escape(url)}/ or with: streamserve status --url {escape(url)}"
                " (Ctrl-C ends the demo)"
            )
        first = self._descriptors[0]
        self._models.publish(encode_descriptor(first), origin=first.name)
        threads = [
            threading.Thread(target=self._publish_models, daemon=True),
            threading.Thread(target=self._stream_records, daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            return self._runtime.run()
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()

    def _show(self, event: ModelEvent) -> None:
        elapsed = time.monotonic() - self._started
        if event.kind is ModelEventKind.SWAPPED:
            self._console.print(
                f"[{elapsed:6.2f}s] [bold green]swap[/] {event.key}: now served by "
                f"[bold]{event.name}[/] ({event.version}), loaded in "
                f"{event.load_duration_s * 1000:.0f} ms; "
                f"{self._core.counts['records']:,} records scored so far"
            )
        elif event.kind in (ModelEventKind.REJECTED, ModelEventKind.SUPERSEDED):
            self._console.print(
                f"[{elapsed:6.2f}s] [bold red]{event.kind}[/] {event.name}: "
                f"{escape(event.reason or 'a newer model arrived first')}"
            )
        if event.kind is not ModelEventKind.STAGED:
            self._settled.set()

    def _wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Waits for ``event`` up to ``timeout_s``; False at once when the demo is stopped."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            remaining_s = deadline - time.monotonic()
            if event.wait(min(STOP_CHECK_S, max(remaining_s, 0))):
                return True
            if remaining_s <= 0:
                return False
        return False

    def _publish_models(self) -> None:
        for descriptor in self._descriptors[1:]:
            self._wait(self._settled, MODEL_SETTLE_TIMEOUT_S)
            if self._stop.wait(self._options.seconds_per_model):
                return
            self._settled.clear()
            self._models.publish(encode_descriptor(descriptor), origin=descriptor.name)
        self._wait(self._settled, MODEL_SETTLE_TIMEOUT_S)
        self._stop.wait(self._options.seconds_per_model)
        if self._options.http_port is not None and not self._stop.is_set():
            self._console.print(
                f"[{time.monotonic() - self._started:6.2f}s] every model served; the stream goes "
                "on until Ctrl-C"
            )
            self._stop.wait()
        self._finished.set()

    def _stream_records(self) -> None:
        # The runtime ends when this thread closes the records or stops it: whatever happens
        # here, it does one of the two, or the demo would wait for records forever, deaf to
        # Ctrl-C (which only sets the stop event this thread looks at).
        try:
            self._stream()
        finally:
            self._data.close()
            if self._stop.is_set():  # stopped from outside: perhaps still loading a model
                self._runtime.stop()

    def _stream(self) -> None:
        lines, interval = self._lines, 256 / self._options.rate_per_s
        position = 0
        while not (self._stop.is_set() or self._finished.is_set()):
            chunk = [
                InputRecord(
                    lines[(position + i) % len(lines)],
                    position=f"winequality_red.csv:{(position + i) % len(lines) + 1}",
                )
                for i in range(256)
            ]
            position += len(chunk)
            self._data.put(chunk)
            time.sleep(interval)


def _print_next_steps(console: Console, options: DemoOptions) -> None:
    if options.http_port is None:
        console.print(
            "\nWatch it live: streamserve demo --http-port 8080, then open "
            "http://127.0.0.1:8080/ (the dashboard)\n"
            "or print this table from the running server: "
            "streamserve status --url http://127.0.0.1:8080"
        )
    else:
        console.print(
            "\nYour own models get the same dashboard and status table: "
            "streamserve serve --http-port PORT (see streamserve serve --help)"
        )


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
