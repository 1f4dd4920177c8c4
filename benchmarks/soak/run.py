"""One soak run: broker, topics, the fleet's first models, the server process; then its maximum
throughput, then half of it for the run's length with the churn beside it, a sample every
10 seconds into the CSV; then every record's output awaited (the drain: a final window, judged
too), the chart and the verdict."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.broker import BenchBroker, running
from benchmarks.common import wine_data
from benchmarks.soak.chart import draw
from benchmarks.soak.fleet import Fleet, build_fleet
from benchmarks.soak.ledger import Accounts, Ledger, OutputReader
from benchmarks.soak.probe import sample_process, server_metrics
from benchmarks.soak.server import ServerProcess, Topics
from benchmarks.soak.traffic import Churn, ChurnPlan, RecordSender
from benchmarks.soak.verdict import Limits, Verdict, judge

COLUMNS = (
    "elapsed_s",
    "rss_mib",
    "fds",
    "threads",
    "jvm_heap_mib",
    "jvm_old_mib",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "oldest_wait_ms",
    "throughput_rps",
    "consumer_lag",
    "sent",
    "answered",
    "swaps_published",
    "swaps_served",
    "rollbacks",
    "rollbacks_refused",
    "v2_requests",
)
DATA_PARTITIONS = 4
CALIBRATION_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 10.0
    keys: int = 100
    rate: float | None = None  # records/s; None: half of the maximum measured first
    calibration_records: int = 60_000
    sample_every_s: float = 10.0
    warmup_fraction: float = 0.2
    min_warmup_s: float = 30.0
    plan: ChurnPlan = field(default_factory=ChurnPlan)
    limits: Limits = field(default_factory=Limits)
    jvm_heap_mib: int = 256  # the server's JVM heap, fixed; 0: the JVM's own sizing
    out: Path = Path("benchmarks/results/soak")
    broker: str = "kafka"

    @property
    def duration_s(self) -> float:
        return self.minutes * 60

    @property
    def warmup_s(self) -> float:
        return max(self.min_warmup_s, self.warmup_fraction * self.duration_s)


@dataclass
class Outcome:
    """What a run measured and concluded; ``soak.json`` holds it."""

    options: SoakOptions
    max_rate: float | None = None
    rate: float = math.nan
    samples: list[dict[str, float]] = field(default_factory=list)
    drain: dict[str, float] | None = None  # the final window: what was answered after the run
    server_exit: int | None = None
    verdict: Verdict | None = None

    def as_json(self) -> dict[str, object]:
        verdict = self.verdict
        return {
            "options": {**asdict(self.options), "out": str(self.options.out)},
            "max_rate_rps": self.max_rate,
            "rate_rps": self.rate,
            "warmup_s": self.options.warmup_s,
            "drain": self.drain,
            "server_exit": self.server_exit,
            "passed": verdict.passed if verdict else False,
            "failures": verdict.failures if verdict else ["the run did not finish"],
            "drifts": {m: d.as_json() for m, d in verdict.drifts.items()} if verdict else {},
            "samples_judged": verdict.samples_judged if verdict else 0,
            "median_of": verdict.window if verdict else 0,
            "figures": verdict.figures if verdict else {},
        }


def run_soak(options: SoakOptions) -> Outcome:
    options.out.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(options)
    _say(f"building {options.keys} keys' models ...")
    with wine_data() as wine:
        fleet = build_fleet(wine, options.keys)
    accounts, churn_counts = _run(fleet, outcome)
    verdict = judge(
        outcome.samples,
        accounts,
        churn_counts,
        options.warmup_s,
        options.limits,
        rate=outcome.rate,
        drain=outcome.drain,
        server_exit=outcome.server_exit,
    )
    outcome.verdict = verdict
    title = f"streamserve soak: {options.keys} keys, {outcome.rate:,.0f} records/s, " + (
        "passed" if verdict.passed else "FAILED"
    )
    draw(outcome.samples, options.warmup_s, title, options.out / "soak.png")
    write_report(outcome, accounts, churn_counts)
    return outcome


def write_report(outcome: Outcome, accounts: Accounts, churn: dict[str, int]) -> None:
    """``soak.json``: the outcome, the accounts and the driver's churn counts (what
    ``--judge`` reads back, with ``soak.csv``)."""
    report = {**outcome.as_json(), "accounts": asdict(accounts), "churn": churn}
    (outcome.options.out / "soak.json").write_text(json.dumps(report, indent=2, default=str))


def _run(fleet: Fleet, outcome: Outcome) -> tuple[Accounts, dict[str, int]]:
    """Broker, server, calibration, soak and drain: the accounts and the churn's counts."""
    options = outcome.options
    with running(options.broker) as broker:
        topics = Topics()
        _create_topics(broker, topics, fleet)
        ledger = Ledger(topics.data)
        with _reading(broker, topics, ledger), _serving(options, broker, topics) as server:
            sender = RecordSender(broker.bootstrap, topics.data, fleet, ledger)
            outcome.max_rate = None if options.rate else _max_rate(sender, ledger, options)
            outcome.rate = options.rate or (outcome.max_rate or 0) / 2
            churn = Churn(
                fleet,
                options.plan,
                bootstrap=broker.bootstrap,
                models_topic=topics.models,
                api=server.api,
                admin_token=server.admin_token,
            )
            _say(f"soaking {options.minutes:g} min at {outcome.rate:,.0f} records/s ...")
            last_sample = _soak(server, sender, churn, ledger, outcome)
            outcome.drain = _drain(sender, ledger, last_sample)
            outcome.server_exit = server.stop()
            counts = churn.counts
            del sender, churn  # their clients go before the broker (no reconnect attempts logged)
    return ledger.accounts(), counts


def _create_topics(broker: BenchBroker, topics: Topics, fleet: Fleet) -> None:
    broker.create_topics(topics.data, partitions=DATA_PARTITIONS)
    broker.create_topics(topics.results, topics.errors)
    # As the documentation asks of a models topic: one partition, compacted, keyed by key.
    broker.broker.create_topics(topics.models, partitions=1, config={"cleanup.policy": "compact"})
    broker.produce(topics.models, [fleet.model_message(i, 0) for i in range(len(fleet.keys))])


@contextmanager
def _reading(broker: BenchBroker, topics: Topics, ledger: Ledger) -> Iterator[OutputReader]:
    reader = OutputReader(broker.bootstrap, [topics.results, topics.errors], ledger)
    reader.start()
    try:
        yield reader
    finally:
        reader.stop()


@contextmanager
def _serving(options: SoakOptions, broker: BenchBroker, topics: Topics) -> Iterator[ServerProcess]:
    server = ServerProcess(options.out, broker, topics, jvm_heap_mib=options.jvm_heap_mib)
    try:
        _say(f"server pid {server.pid}: loading every key's first model ...")
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _max_rate(sender: RecordSender, ledger: Ledger, options: SoakOptions) -> float:
    """Records/s the server answers flat out: ``calibration_records`` sent at once, timed from
    the first output to the last (not from the send: the first fetch is not the server's pace).
    Its records are accounted like all others; their latencies are left out of the windows."""
    count = options.calibration_records
    _say(f"measuring the maximum throughput with {count:,} records ...")
    before = ledger.answered
    sender.send(count)
    deadline = time.monotonic() + CALIBRATION_TIMEOUT_S
    first: tuple[float, int] | None = None
    while (answered := ledger.answered - before) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"calibration: {answered} of {count} records answered in time")
        if first is None and answered:
            first = (time.monotonic(), answered)
        sender.poll(0.02)
    started, already = first or (time.monotonic(), 0)
    rate = (count - already) / max(time.monotonic() - started, 1e-3)
    ledger.take_window()
    _say(f"maximum: {rate:,.0f} records/s")
    return rate


def _soak(
    server: ServerProcess, sender: RecordSender, churn: Churn, ledger: Ledger, outcome: Outcome
) -> float:
    """The run itself; returns when (``time.monotonic``) its last sample was taken."""
    options = outcome.options
    with (options.out / "soak.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS)
        writer.writeheader()
        started = time.monotonic()
        sender.pace(outcome.rate)
        churn.start()
        try:
            ticks = max(1, round(options.duration_s / options.sample_every_s))
            last = started
            for tick in range(1, ticks + 1):
                _sleep_until(started + tick * options.sample_every_s, server)
                now = time.monotonic()
                row = _sample(server, sender, churn, ledger, now - started, now - last)
                last = now
                writer.writerow(row)
                stream.flush()
                outcome.samples.append(row)
                _say(_progress(row))
        finally:
            churn.stop()
            sender.stop()
    return last


def _sample(
    server: ServerProcess,
    sender: RecordSender,
    churn: Churn,
    ledger: Ledger,
    elapsed_s: float,
    interval_s: float,
) -> dict[str, float]:
    process = sample_process(server.pid)
    metrics = server_metrics(server.api)
    window = ledger.take_window()
    counts = churn.counts
    return {
        "elapsed_s": round(elapsed_s, 1),
        "rss_mib": round(process.rss_mib, 1),
        "fds": process.fds,
        "threads": process.threads,
        "jvm_heap_mib": round(process.jvm_heap_mib, 1),
        "jvm_old_mib": round(process.jvm_old_mib, 1),
        **window.figures(interval_s),
        "consumer_lag": metrics.get("streamserve_consumer_lag", math.nan),
        "sent": sender.sent,
        "answered": ledger.answered,
        "swaps_published": counts.get("swaps", 0),
        "swaps_served": ledger.swaps_served,
        "rollbacks": counts.get("rollbacks", 0),
        "rollbacks_refused": counts.get("rollbacks_refused", 0),
        "v2_requests": counts.get("v2_requests", 0),
    }


def _sleep_until(deadline: float, server: ServerProcess) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        server.check_running()


def _drain(sender: RecordSender, ledger: Ledger, last_sample: float) -> dict[str, float]:
    """Waits until every record sent has its output (or the limit: they are then missing);
    returns the final window's figures: the outputs read since the last sample, and the oldest
    record still waiting at the end."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        accounts = ledger.accounts()
        if accounts.sent + accounts.send_failures >= sender.sent and not accounts.missing:
            time.sleep(1.0)  # a duplicate would follow its first output closely
            break
        time.sleep(0.2)
    window = ledger.take_window()
    seconds = time.monotonic() - last_sample
    return {"seconds": round(seconds, 1), "outputs": window.outputs, **window.figures(seconds)}


def _progress(row: dict[str, float]) -> str:
    return (
        f"{row['elapsed_s']:>7.0f} s  RSS {row['rss_mib']:,.0f} MiB  fds {row['fds']:.0f}  "
        f"threads {row['threads']:.0f}  JVM {row['jvm_heap_mib']:.0f} MiB  "
        f"p50/p99 {row['p50_ms']:.1f}/{row['p99_ms']:.1f} ms  {row['throughput_rps']:,.0f} rec/s  "
        f"lag {row['consumer_lag']:.0f}  oldest wait {row['oldest_wait_ms'] / 1000:.1f} s  "
        f"swaps {row['swaps_served']:.0f}/{row['swaps_published']:.0f} served"
    )


def _say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)
