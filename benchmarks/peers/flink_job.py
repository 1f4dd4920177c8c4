"""The wine scorer as a PyFlink job (apache-flink 2.3, .venv-peers-flink), on a local MiniCluster.

Written as Flink's Python docs recommend for model inference: the Table API with a vectorized
(pandas) Python UDF, which Flink hands a batch of rows in Arrow format (up to
``python.fn-execution.arrow.batch.size`` rows, 1,000 by default) so that the model scores the
batch in one call; the model is loaded once per worker in the UDF's ``open``. Records come from
the Kafka SQL connector (the shaded ``flink-sql-connector-kafka`` jar, added with
``pipeline.jars``) in the ``raw`` format: Flink's ``protobuf`` format needs the message compiled
into a Java class, and the UDF decodes the WineRecord in Python, as a Python user does. Results go
to Kafka, key and value ``raw``, one message per record. Checkpoints every 5 s make the sink
at-least-once, as Quix's commits and streamserve's are. Every other setting is Flink's default:
parallelism = the machine's cores, the bundle settings of the Python workers.

Run by the benchmark (benchmarks/peers/scenario.py) until it is stopped with SIGTERM.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyflink.table.udf import ScalarFunction

from benchmarks.peers.wire import (
    WINE_FEATURES,
    encode_result,
    load_scorer,
    peer_arguments,
    wine_record_class,
)

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment
    from pyflink.table.udf import udf

    parser = peer_arguments(__doc__)
    parser.add_argument("--connector-jar", type=Path, required=True)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Flink setting over the defaults (repeatable): python.fn-execution.bundle.time=10",
    )
    args = parser.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("pipeline.jars", args.connector_jar.resolve().as_uri())
    config.set("python.pythonpath", str(REPO))  # the workers import benchmarks.peers.wire
    config.set("execution.checkpointing.interval", "5s")
    for setting in args.config:
        key, _, value = setting.partition("=")
        config.set(key, value)
    kafka = f"'connector' = 'kafka', 'properties.bootstrap.servers' = '{args.bootstrap_servers}'"
    env.execute_sql(
        f"""
        CREATE TABLE records (
          payload BYTES,
          source_topic STRING METADATA FROM 'topic' VIRTUAL,
          source_partition INT METADATA FROM 'partition' VIRTUAL,
          source_offset BIGINT METADATA FROM 'offset' VIRTUAL
        ) WITH (
          {kafka}, 'topic' = '{args.input_topic}', 'properties.group.id' = '{args.group}',
          'scan.startup.mode' = 'group-offsets',
          'properties.auto.offset.reset' = 'earliest',
          'format' = 'raw'
        )"""
    )
    env.execute_sql(
        f"""
        CREATE TABLE results (
          result_key STRING,
          document STRING
        ) WITH (
          {kafka}, 'topic' = '{args.output_topic}',
          'key.format' = 'raw', 'key.fields' = 'result_key',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
        )"""
    )
    score = udf(
        WineScorer(args.model_kind, str(args.model_path), args.model_name),
        result_type=DataTypes.ROW(
            [
                DataTypes.FIELD("result_key", DataTypes.STRING()),
                DataTypes.FIELD("document", DataTypes.STRING()),
            ]
        ),
        func_type="pandas",
    )
    env.create_temporary_function("score", score)
    job = env.execute_sql(
        """
        INSERT INTO results
        SELECT scored.result_key, scored.document FROM (
          SELECT score(payload, source_topic, source_partition, source_offset) AS scored
          FROM records
        )"""
    )
    if args.ready_file is not None:
        args.ready_file.write_text("ready")
    job.wait()


class WineScorer(ScalarFunction):  # type: ignore[misc]  # pyflink has no type hints
    """The vectorized UDF: a batch of WineRecord payloads in, their result documents out."""

    def __init__(self, kind: str, path: str, name: str) -> None:
        self.kind, self.path, self.name = kind, path, name
        self.scorer: Any = None
        self.record: Any = None

    def open(self, function_context: Any) -> None:
        self.scorer = load_scorer(self.kind, Path(self.path), self.name)
        self.record = wine_record_class()()

    def close(self) -> None:
        self.scorer = None

    def eval(self, payloads: Any, topics: Any, partitions: Any, offsets: Any) -> Any:
        import pandas as pd

        record, features_of = self.record, operator.attrgetter(*WINE_FEATURES)
        keys, rows = [], []
        for payload in payloads:
            record.ParseFromString(payload)
            keys.append(record.dataType)
            rows.append(features_of(record))
        started = time.perf_counter()
        values = self.scorer(np.array(rows))
        scoring_us = (time.perf_counter() - started) * 1e6 / max(len(rows), 1)
        documents = [
            encode_result(self.scorer, key, value, f"{topic}/{part}@{offset}", scoring_us).decode()
            for key, value, topic, part, offset in zip(
                keys, values, topics, partitions, offsets, strict=True
            )
        ]
        return pd.DataFrame({"result_key": keys, "document": documents})


if __name__ == "__main__":
    main()
