"""Kafka: the embedded broker, the CloudEvents binding and the producer OMS publishes with."""

from oms.kafka.broker import EmbeddedBroker, ensure_topics
from oms.kafka.cloudevents import CloudEvent, KafkaRecord, attributes, to_record

__all__ = [
    "CloudEvent",
    "EmbeddedBroker",
    "KafkaRecord",
    "attributes",
    "ensure_topics",
    "to_record",
]
