"""The wine scorer as a Quix Streams application (quixstreams 3.28, .venv-peers-quix).

Written as Quix's docs show: an ``Application``, an input topic with the protobuf deserializer
(``to_dict=False``, which its docs advise where speed matters: no message-to-dict conversion), a
``StreamingDataFrame`` whose ``apply`` scores each message, and ``to_topic`` with the JSON
serializer. A StreamingDataFrame processes one message at a time and offers no micro-batches (its
windows aggregate by time or count per message key, through a state store: no batching for a
model call), so the model scores one row per call. At-least-once, commits every 5 s (defaults).

Run by the benchmark (benchmarks/peers/scenario.py) until it is stopped with SIGTERM.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.wire import (
    WINE_FEATURES,
    load_scorer,
    peer_arguments,
    result_document,
    wine_record_class,
)


def main() -> None:
    from quixstreams import Application, message_context
    from quixstreams.models.serializers.protobuf import ProtobufDeserializer

    args = peer_arguments(__doc__).parse_args()
    scorer = load_scorer(args.model_kind, args.model_path, args.model_name)
    features_of = operator.attrgetter(*WINE_FEATURES)

    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        auto_create_topics=False,  # the benchmark creates them, as an operator would
        loglevel="WARNING",
    )
    records = app.topic(
        args.input_topic,
        value_deserializer=ProtobufDeserializer(msg_type=wine_record_class(), to_dict=False),
    )
    results = app.topic(args.output_topic, key_serializer="str", value_serializer="json")

    def score(record: Any) -> dict[str, object]:
        started = time.perf_counter()
        value = scorer(np.array([features_of(record)]))[0]
        scoring_us = (time.perf_counter() - started) * 1e6
        context = message_context()
        position = f"{context.topic}/{context.partition}@{context.offset}"
        return result_document(scorer, record.dataType, value, position, scoring_us)

    frame = app.dataframe(records)
    frame = frame.apply(score)
    frame.to_topic(results, key=lambda result: result["key"])
    _ready(args.ready_file)
    app.run()


def _ready(path: Path | None) -> None:
    if path is not None:
        path.write_text("ready")


if __name__ == "__main__":
    main()
