"""The embedded Tansu broker for real: start, serve, stop, restart, topics, start-up errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from oms import exceptions
from oms.kafka import EmbeddedBroker, ensure_topics


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    server = EmbeddedBroker("127.0.0.1", 0, tmp_path / "tansu.log")
    await server.start()
    yield server
    await server.stop(grace_s=1.0)


async def _partitions(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
        described = await admin.describe_topics(topics) if topics else []
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described}


async def test_start_on_a_free_port_serves_kafka_and_stops(broker: EmbeddedBroker) -> None:
    assert broker.port != 0
    assert broker.is_running
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"

    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait("t", b'{"a":1}', key=b"k", headers=[("h", b"v")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition("t", sent.partition)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        with anyio.fail_after(10):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value, list(record.headers)) == (b"k", b'{"a":1}', [("h", b"v")])

    await broker.stop(grace_s=1.0)
    assert not broker.is_running
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", broker.port), 1),
    ):
        pass
    assert "tansu broker" in broker.log_path.read_text()


async def test_ensure_topics_creates_missing_ones_and_a_restart_forgets_them(
    broker: EmbeddedBroker,
) -> None:
    created = await ensure_topics(broker.bootstrap, ["a", "b"], partitions=3, replication=1)
    assert sorted(created) == ["a", "b"]
    assert await ensure_topics(broker.bootstrap, ["a", "b", "c"], 3, 1) == ["c"]
    assert await _partitions(broker.bootstrap) == {"a": 3, "b": 3, "c": 3}

    port = broker.port
    await broker.stop(grace_s=1.0)
    await broker.start()
    assert broker.port == port
    assert await _partitions(broker.bootstrap) == {}  # memory storage: all gone
    assert sorted(await ensure_topics(broker.bootstrap, ["a", "b"], 3, 1)) == ["a", "b"]


async def test_tansu_creates_unknown_topics_with_four_partitions(broker: EmbeddedBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait("never.created", b"x")
    finally:
        await producer.stop()
    assert await _partitions(broker.bootstrap) == {"never.created": 4}


async def test_a_port_in_use_is_refused(broker: EmbeddedBroker, tmp_path: Path) -> None:
    second = EmbeddedBroker("127.0.0.1", broker.port, tmp_path / "second.log")
    with pytest.raises(exceptions.EmbeddedBrokerError, match="already in use"):
        await second.start()
    assert not second.is_running


async def test_a_broker_that_cannot_listen_names_its_log(tmp_path: Path) -> None:
    # Bound but not listening: connections are refused, yet Tansu cannot bind it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = EmbeddedBroker("127.0.0.1", port, tmp_path / "failing.log", start_timeout_s=10)
        with pytest.raises(
            exceptions.EmbeddedBrokerError, match=r"exited with code .*failing\.log"
        ):
            await server.start()
    assert not server.is_running


async def test_ensure_topics_without_a_broker_is_bounded() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with anyio.fail_after(10), pytest.raises(exceptions.KafkaUnavailable):
        await ensure_topics(f"127.0.0.1:{port}", ["a"], 1, 1, timeout_s=2)
