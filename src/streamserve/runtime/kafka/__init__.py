"""The Kafka runtime (the ``kafka`` extra): see :mod:`.transport`."""

from streamserve.runtime.kafka.clients import DATA_CONSUMER_DEFAULTS, confluent_kafka_module
from streamserve.runtime.kafka.models_topic import MAX_LOADS_PENDING
from streamserve.runtime.kafka.transport import KafkaRuntime, KafkaTransport, kafka_runtime

__all__ = [
    "DATA_CONSUMER_DEFAULTS",
    "MAX_LOADS_PENDING",
    "KafkaRuntime",
    "KafkaTransport",
    "confluent_kafka_module",
    "kafka_runtime",
]
