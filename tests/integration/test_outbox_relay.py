"""The outbox relay against a real PostgreSQL and a real (embedded Tansu) Kafka.

Faults are provoked for real: the broker is stopped and restarted, a record is
too large, a topic name is refused, two relays compete for the leadership.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Consumer
from prometheus_client import REGISTRY

from oms import config, domain
from oms.actors.relay import OutboxRelay
from oms.db import pool as db_pool
from oms.kafka import EmbeddedBroker, attributes, ensure_topics
from oms.store import outbox

EVENTS = config.EventsSettings(source="/oms/test")
TOPICS = [EVENTS.topic_requested, EVENTS.topic_submitted, EVENTS.topic_status]
PARTITIONS = 3
FAST = config.RelaySettings(
    batch_size=50,
    idle_poll_s=0.05,
    max_attempts=3,
    backoff_base_s=0.05,
    backoff_max_s=0.2,
    leader_retry_s=0.1,
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Payload(msgspec.Struct, frozen=True):
    document_id: uuid.UUID
    seq: int
    blob: str = ""


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    server = EmbeddedBroker("127.0.0.1", 0, tmp_path / "tansu.log")
    await server.start()
    await ensure_topics(server.bootstrap, TOPICS, PARTITIONS, 1)
    yield server
    await server.stop(grace_s=1.0)


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    database = await db_pool.create_pool(
        database_dsn, config.DatabaseSettings(pool_min_size=1, pool_max_size=4)
    )
    yield database
    await database.close()


def kafka_settings(broker: EmbeddedBroker) -> config.KafkaSettings:
    return config.KafkaSettings(bootstrap_servers=broker.bootstrap, request_timeout_s=1.0)


def make_relay(
    pool: asyncpg.Pool, broker: EmbeddedBroker, settings: config.RelaySettings = FAST
) -> OutboxRelay:
    return OutboxRelay(pool, settings, kafka_settings(broker), EVENTS, embedded=True)


@asynccontextmanager
async def running(*relays: OutboxRelay) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for relay in relays:
            await tg.start(relay.run)
        try:
            yield
        finally:
            for relay in relays:
                await relay.stop(timeout_s=10)


async def insert(
    pool: asyncpg.Pool,
    documents: Sequence[uuid.UUID],
    events_each: int = 3,
    topic: str = EVENTS.topic_status,
    blob: str = "",
    first_seq: int = 0,
) -> list[uuid.UUID]:
    """``events_each`` events per document on ``topic``, interleaved; their event ids.

    Rows written as the store writes them (``journal.append_outbox``), but with any
    topic and event type: the relay publishes what a row says.
    """
    rows = [
        (domain.uuid7(), document, f"oms.document.step{seq}", Payload(document, seq, blob))
        for seq in range(first_seq, first_seq + events_each)
        for document in documents
    ]
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await conn.executemany(
            """INSERT INTO outbox (event_id, topic, message_key, event_type, subject, payload,
                   trace_id, created_at)
               VALUES ($1, $2, $3, $4, $3, $5, $6, $7)""",
            [
                (
                    event_id,
                    topic,
                    str(document),
                    event_type,
                    msgspec.json.encode(payload),
                    TRACE_ID,
                    now,
                )
                for event_id, document, event_type, payload in rows
            ],
        )
    return [event_id for event_id, *_ in rows]


async def wait_published(pool: asyncpg.Pool, count: int, timeout_s: float = 15) -> None:
    """Bounded: until ``count`` rows are published."""
    with anyio.fail_after(timeout_s):
        while True:
            async with pool.acquire() as conn:
                done = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
                )
            if done >= count:
                return
            await anyio.sleep(0.02)


async def wait_dead(pool: asyncpg.Pool, count: int, timeout_s: float = 20) -> None:
    """Bounded: until ``count`` rows are dead."""
    with anyio.fail_after(timeout_s):
        while True:
            async with pool.acquire() as conn:
                if (await outbox.backlog(conn)).dead >= count:
                    return
            await anyio.sleep(0.05)


async def wait_for(
    condition: Callable[[], bool], timeout_s: float = 10, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


async def consume(
    bootstrap: str, topics: Sequence[str], count: int, timeout_s: float = 15
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topics`` from the beginning (aiokafka, no group), at least ``count``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        with anyio.fail_after(timeout_s):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=100)
                for part in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
                    records.extend(batch[part])
        # Anything beyond ``count`` (duplicates) shows up within a short extra wait.
        batch = await consumer.getmany(timeout_ms=300)
        for part in batch:
            records.extend(batch[part])
    finally:
        await consumer.stop()
    return records


def seqs_by_key(records: Sequence[ConsumerRecord[bytes, bytes]]) -> dict[bytes, list[int]]:
    """Per key, the ``seq`` of each event in the order received, first occurrences only."""
    seen: set[bytes] = set()
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        ce_id = dict(record.headers)["ce_id"]
        if ce_id in seen:
            continue
        seen.add(ce_id)
        by_key[record.key].append(json.loads(record.value)["seq"])
    return by_key


def _errors(kind: str) -> float:
    value = REGISTRY.get_sample_value("oms_kafka_publish_errors_total", {"kind": kind})
    return value or 0.0


async def outbox_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM outbox ORDER BY id")


# --- tests ----------------------------------------------------------------------------------


async def test_relay_publishes_binary_cloudevents_in_order_per_document(
    pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    documents = [uuid.uuid4() for _ in range(20)]
    event_ids = await insert(pool, documents, events_each=3)
    relay = make_relay(pool, broker)
    async with running(relay):
        await wait_published(pool, 60)
        assert relay.is_leader
        assert relay.healthy
        assert relay.last_error is None
        # Rows committed while the relay idles go out on a poke.
        later = await insert(pool, documents[:2], events_each=1, topic=EVENTS.topic_requested)
        relay.poke()
        await wait_published(pool, 62)
        async with pool.acquire() as conn:
            backlog = await outbox.backlog(conn)
    assert backlog == outbox.OutboxBacklog(0, 0.0, 0)

    records = await consume(broker.bootstrap, [EVENTS.topic_status], 60)
    assert len(records) == 60
    assert {dict(r.headers)["ce_id"].decode() for r in records} == {str(e) for e in event_ids}
    by_key = seqs_by_key(records)
    assert set(by_key) == {str(d).encode() for d in documents}
    assert all(seqs == [0, 1, 2] for seqs in by_key.values())

    record = next(r for r in records if json.loads(r.value)["seq"] == 1)
    headers = dict(record.headers)
    assert [name for name, _ in record.headers] == [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_time",
        "ce_subject",
        "content-type",
        "traceparent",
    ]
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"oms.document.step1"
    assert headers["ce_source"] == b"/oms/test"
    assert headers["ce_subject"] == record.key
    assert headers["content-type"] == b"application/json"
    assert RFC3339_UTC.match(headers["ce_time"].decode())
    assert re.fullmatch(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-01", headers["traceparent"].decode())
    assert json.loads(record.value) == {"document_id": record.key.decode(), "seq": 1, "blob": ""}
    assert attributes(record.headers)["id"] == headers["ce_id"].decode()

    requested = await consume(broker.bootstrap, [EVENTS.topic_requested], 2)
    assert sorted(dict(r.headers)["ce_id"].decode() for r in requested) == sorted(
        str(e) for e in later
    )
    rows = await outbox_rows(pool)
    assert all(r["published_at"] is not None and r["attempts"] == 0 for r in rows)


async def test_a_confluent_kafka_subscriber_reads_the_events(
    pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    """librdkafka in subscribe mode (a consumer group), as an Event Hub consumer would."""
    documents = [uuid.uuid4() for _ in range(5)]
    await insert(pool, documents, events_each=2)
    relay = make_relay(pool, broker)
    async with running(relay):
        await wait_published(pool, 10)

    def poll_all() -> list[tuple[bytes, bytes, dict[str, bytes]]]:
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        received: list[tuple[bytes, bytes, dict[str, bytes]]] = []
        try:
            consumer.subscribe([EVENTS.topic_status])
            deadline = time.monotonic() + 60
            while len(received) < 10 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                received.append((message.key(), message.value(), dict(message.headers() or [])))
        finally:
            consumer.close()
        return received

    received = await anyio.to_thread.run_sync(poll_all)
    assert len(received) == 10
    for key, value, headers in received:
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_source"] == b"/oms/test"
        assert headers["ce_subject"] == key
        assert headers["content-type"] == b"application/json"
        assert json.loads(value)["document_id"] == key.decode()
    order: dict[bytes, list[int]] = defaultdict(list)
    for key, value, _ in received:
        order[key].append(json.loads(value)["seq"])
    assert all(seqs == [0, 1] for seqs in order.values())


async def test_broker_down_keeps_rows_and_a_restart_drains_them(
    pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    documents = [uuid.uuid4() for _ in range(5)]
    await insert(pool, documents, events_each=1)
    relay = make_relay(pool, broker)
    async with running(relay):
        await wait_published(pool, 5)
        await broker.stop(grace_s=0.2)  # SIGTERM then, with the relay connected, SIGKILL

        pending = await insert(pool, documents, events_each=2, topic=EVENTS.topic_submitted)
        relay.poke()
        await wait_for(lambda: not relay.healthy, what="relay unhealthy")
        assert (relay.last_error or "").startswith("kafka:")
        await anyio.sleep(1.5)  # several failed rounds and reconnects
        rows = await outbox_rows(pool)
        waiting = [r for r in rows if r["event_id"] in set(pending)]
        assert len(waiting) == 10
        assert all(r["published_at"] is None and r["attempts"] == 0 for r in waiting)
        assert all(r["dead_at"] is None for r in rows)
        async with pool.acquire() as conn:
            assert (await outbox.backlog(conn)).unpublished == 10

        await broker.start()  # same port, empty: memory storage
        await wait_published(pool, 15)
        await wait_for(lambda: relay.healthy, what="relay healthy again")
        assert relay.last_error is None

    # The relay created the topics again (3 partitions, not Tansu's automatic 4).
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([EVENTS.topic_submitted])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == PARTITIONS
    records = await consume(broker.bootstrap, [EVENTS.topic_submitted], 10)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == {str(e) for e in pending}
    assert all(seqs == [0, 1] for seqs in seqs_by_key(records).values())


async def test_rows_kafka_refuses_die_and_can_be_republished(
    pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    big, small, refused = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insert(pool, [big], events_each=1)  # seq 0: fine
    (too_large,) = await insert(pool, [big], 1, blob="x" * 1_100_000, first_seq=1)
    await insert(pool, [big], events_each=1, first_seq=2)  # after the large one
    await insert(pool, [small], events_each=2)
    (bad_topic,) = await insert(pool, [refused], events_each=1, topic="bad topic!")
    errors_before = {kind: _errors(kind) for kind in ("too_large", "topic_refused")}

    relay = make_relay(pool, broker)
    async with running(relay):
        await wait_published(pool, 4)

        await wait_dead(pool, 2)
        assert relay.healthy  # the records' fault, not Kafka's

    rows = {r["event_id"]: r for r in await outbox_rows(pool)}
    for event_id, kind in ((too_large, "too_large: MessageSizeTooLargeError"), (bad_topic, "")):
        row = rows[event_id]
        assert row["dead_at"] is not None
        assert row["published_at"] is None
        assert row["attempts"] == FAST.max_attempts
        assert row["next_attempt_at"] is None
        assert row["last_error"].startswith(kind or "topic_refused: Kafka has no topic")
    assert all(r["published_at"] is not None for r in rows.values() if r["dead_at"] is None)
    for kind in ("too_large", "topic_refused"):
        assert _errors(kind) - errors_before[kind] == FAST.max_attempts

    # The large row's document: seq 0, then seq 2 (sent only after seq 1 had failed).
    records = await consume(broker.bootstrap, [EVENTS.topic_status], 4)
    assert seqs_by_key(records)[str(big).encode()] == [0, 2]

    async with pool.acquire() as conn:
        dead = await outbox.list_dead(conn, limit=10)
        assert [d.event_id for d in dead] == [too_large, bad_topic]
        assert await outbox.list_dead(conn, limit=10, after_id=dead[0].id) == dead[1:]
        assert await outbox.republish(conn, dead[0].id)
        assert not await outbox.republish(conn, dead[0].id)  # no longer dead
        assert not await outbox.republish(conn, 10**9)
        due = await outbox.fetch_due(conn, 10, datetime.now(UTC))
        assert [row.event_id for row in due] == [too_large]
        assert due[0].attempts == 0
        assert (await outbox.backlog(conn)).dead == 1


async def test_record_failure_backs_off_then_kills(pool: asyncpg.Pool) -> None:
    (event_id,) = await insert(pool, [uuid.uuid4()], events_each=1)
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        (row,) = await outbox.fetch_due(conn, 10, now)
        assert row.event_id == event_id
        assert await outbox.record_failure(conn, [row], "boom", now, 2, lambda n: 30.0 * n) == []
        assert await outbox.fetch_due(conn, 10, now) == []
        assert await outbox.fetch_due(conn, 10, now + timedelta(seconds=29)) == []
        (again,) = await outbox.fetch_due(conn, 10, now + timedelta(seconds=31))
        assert again.attempts == 1
        assert await outbox.record_failure(conn, [again], "boom", now, 2, lambda n: 1.0) == [row.id]
        assert await outbox.fetch_due(conn, 10, now + timedelta(days=1)) == []
        assert await outbox.mark_published(conn, [row.id], now) == 0  # dead, yet unpublished
        backlog = await outbox.backlog(conn)
    assert (backlog.unpublished, backlog.dead) == (0, 1)


async def test_two_relays_one_leader_and_a_handover_keeps_order(
    pool: asyncpg.Pool, broker: EmbeddedBroker, database_dsn: str
) -> None:
    other_pool = await db_pool.create_pool(
        database_dsn, config.DatabaseSettings(pool_min_size=1, pool_max_size=4)
    )
    small_batches = msgspec.structs.replace(FAST, batch_size=7)
    first = make_relay(pool, broker, small_batches)
    second = make_relay(other_pool, broker, small_batches)
    documents = [uuid.uuid4() for _ in range(10)]
    both_leading: list[bool] = []
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await tg.start(second.run)

            async def watch() -> None:
                while True:
                    both_leading.append(first.is_leader and second.is_leader)
                    await anyio.sleep(0.005)

            tg.start_soon(watch)
            await wait_for(lambda: first.is_leader or second.is_leader, what="a leader")
            leader, standby = (first, second) if first.is_leader else (second, first)
            await insert(pool, documents, events_each=3)
            await wait_published(pool, 30)
            await insert(pool, documents, events_each=30, first_seq=3)  # 300 rows
            leader.poke()
            await leader.stop(timeout_s=10)  # after the round in hand: mid-stream
            assert not leader.is_leader
            async with pool.acquire() as conn:
                assert (await outbox.backlog(conn)).unpublished > 0  # the rest: the standby
            await wait_for(lambda: standby.is_leader, what="the standby to take over")
            await wait_published(pool, 330)
            await standby.stop(timeout_s=10)
            tg.cancel_scope.cancel()
    finally:
        await other_pool.close()
    assert both_leading
    assert not any(both_leading)

    records = await consume(broker.bootstrap, [EVENTS.topic_status], 330)
    assert len({dict(r.headers)["ce_id"] for r in records}) == 330  # nothing lost
    assert all(seqs == list(range(33)) for seqs in seqs_by_key(records).values())


async def test_a_leader_that_loses_its_connection_steps_down(
    pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    """The lock lives in a session: when PostgreSQL drops it, the relay must notice."""
    relay = make_relay(pool, broker)
    async with running(relay):
        await wait_for(lambda: relay.is_leader, what="leadership")
        async with pool.acquire() as conn:
            killed = await conn.fetchval(
                """SELECT pg_terminate_backend(pid) FROM pg_locks
                   WHERE locktype = 'advisory' AND granted"""
            )
            assert killed
        await wait_for(lambda: not relay.is_leader, what="stepping down")
        await wait_for(lambda: relay.is_leader, what="leadership again")
        await insert(pool, [uuid.uuid4()], events_each=2)
        relay.poke()
        await wait_published(pool, 2)
