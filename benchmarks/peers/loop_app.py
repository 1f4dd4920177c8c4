"""The per-record consumer loop a user writes by hand with confluent-kafka: poll one message,
decode it, score one row, produce the result (scenario 3's loop, benchmarks/kafka.py, with the
full result document). It runs in streamserve's own environment, which has every package it needs.

Run by the benchmark (benchmarks/peers/scenario.py) until it is stopped with SIGTERM.
"""

from __future__ import annotations

import operator
import signal
import time
from types import FrameType

import numpy as np

from benchmarks.peers.wire import (
    WINE_FEATURES,
    encode_result,
    load_scorer,
    peer_arguments,
    wine_record_class,
)


def main() -> None:
    from confluent_kafka import Consumer, Producer

    args = peer_arguments(__doc__).parse_args()
    scorer = load_scorer(args.model_kind, args.model_path, args.model_name)
    record = wine_record_class()()
    features_of = operator.attrgetter(*WINE_FEATURES)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.input_topic])
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, "linger.ms": 5})
    stopping = False

    def stop(_signal: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    if args.ready_file is not None:
        args.ready_file.write_text("ready")
    while not stopping:
        message = consumer.poll(0.1)
        if message is None or message.error() is not None:
            continue
        record.ParseFromString(message.value())
        started = time.perf_counter()
        value = scorer(np.array([features_of(record)]))[0]
        scoring_us = (time.perf_counter() - started) * 1e6
        position = f"{message.topic()}/{message.partition()}@{message.offset()}"
        result = encode_result(scorer, record.dataType, value, position, scoring_us)
        while True:
            try:
                producer.produce(args.output_topic, result, key=record.dataType.encode())
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)
    consumer.close()


if __name__ == "__main__":
    main()
