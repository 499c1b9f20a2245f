"""The outbox relay: every outbox row to Kafka, at least once, in order per document.

One relay is active across all OMS processes: the one holding a session
advisory lock on a connection of its own. Every query of the active relay runs
on that connection, so a relay that lost its connection (and with it the lock)
cannot mark anything before it has stepped down; the others retry the lock
every ``leader_retry_s``.

The leader loops: fetch a batch of due rows in id order, send them all, await
the deliveries, mark the delivered rows published in one statement. Per
document, order holds: when a row fails, the later rows of its key are not
sent (or, if already in flight, not marked), so they go again after it;
consumers dedupe by ``ce_id``.

Two kinds of failure:

- Kafka's (unreachable, timed out, no leader): nothing is charged; the relay
  reports itself unhealthy, drops its producer and tries again after an
  exponential backoff, with a fresh producer (and, embedded, the topics
  created again: Tansu forgets them when it restarts).
- The row's (too large, a topic Kafka refuses): the row is charged an attempt
  with a backoff of its own; after ``max_attempts`` it is dead, an entry of the
  error table, until an admin republishes it. While it waits, the later rows of
  its document are published: per-document order is kept until a row fails for
  good reasons of its own, not beyond. (A broker that refuses a record fails
  its whole produce batch: the other rows of that batch are charged one
  attempt too, and go out in the next round without it.)

``poke()`` wakes the relay at once (stages call it after a commit); otherwise
it looks every ``idle_poll_s`` (rows committed by another process wait at most
that long). ``stop()`` lets the round in hand finish, then closes the producer
with a deadline; cancellation closes it too. A relay runs once.

While it leads or tries to, the relay holds one connection of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from anyio.abc import TaskStatus

from oms import config, exceptions, metrics
from oms.actors import relay_round
from oms.backoff import jittered_backoff
from oms.db.pool import CONNECTION_ERRORS, Connection
from oms.kafka import broker, cloudevents
from oms.kafka import producer as kafka_producer
from oms.lifecycle import Component
from oms.store import journal, outbox

logger = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x6F6D_735F_7265_6C79  # "oms_rely": one relay across all processes
_DB_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError)
_ACQUIRE_TIMEOUT_S = 10.0
_CLOSE_DEADLINE_S = 5.0
_BACKLOG_REFRESH_S = 1.0
_IDLE_PROBE_S = 10.0  # an idle leader checks Kafka this often, for readiness


class OutboxRelay(Component):
    name = "outbox relay"

    def __init__(
        self,
        db: asyncpg.Pool,
        settings: config.RelaySettings,
        kafka: config.KafkaSettings,
        events: config.EventsSettings,
        *,
        embedded: bool,
    ) -> None:
        """``kafka.bootstrap_servers`` names the cluster (embedded: the broker's address)."""
        self._db = db
        self._settings = settings
        self._kafka = kafka
        self._events = events
        self._embedded = embedded
        self._producer: AIOKafkaProducer | None = None
        self._healthy = True
        self._is_leader = False
        self._kafka_failures = 0  # consecutive: the exponent of the backoff
        self._last_contact = 0.0
        self.last_error: str | None = None
        # anyio primitives need a running loop: made by run().
        self._wake: anyio.Event | None = None
        self._stopping: anyio.Event | None = None
        self._finished: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._stop_requested = False

    @property
    def healthy(self) -> bool:
        """False while Kafka is failing this relay (a standby relay is healthy)."""
        return self._healthy

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    def poke(self) -> None:
        """Look for due rows now (call after committing outbox rows)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Relay until ``stop()`` or cancellation; started as soon as it runs (leader or not)."""
        self._wake = anyio.Event()
        self._stopping = anyio.Event()
        self._finished = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                task_status.started()
                while not self._stop_requested:
                    await self._serve()
        finally:
            self._finished.set()

    async def drain(self) -> None:
        """Publish what is due now, then step down (the runner bounds this)."""
        self.poke()
        await self.stop(timeout_s=math.inf)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Finish the round in hand and step down; cancel what is left after ``timeout_s``."""
        self._stop_requested = True
        if self._stopping is None or self._finished is None:
            return
        self._stopping.set()
        self.poke()
        if timeout_s is None:
            timeout_s = 2 * self._kafka.request_timeout_s + _CLOSE_DEADLINE_S
        with anyio.move_on_after(timeout_s):
            await self._finished.wait()
        if not self._finished.is_set() and self._scope is not None:
            logger.warning("outbox relay did not stop in time, cancelling it")
            self._scope.cancel()
            await self._finished.wait()

    # --- leadership ---------------------------------------------------------------------

    async def _serve(self) -> None:
        """One attempt at leadership; lead while it lasts, else wait to try again."""
        try:
            async with self._db.acquire(timeout=_ACQUIRE_TIMEOUT_S) as conn:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    try:
                        await self._lead(conn)
                    finally:
                        await self._step_down(conn)
                    return
                await self._refresh_backlog(conn)
        except _DB_ERRORS as exc:
            self.last_error = f"database: {kafka_producer.describe(exc)}"
            logger.warning("outbox relay lost the database", extra={"error": self.last_error})
        await self._sleep(self._settings.leader_retry_s)

    async def _step_down(self, conn: Connection) -> None:
        was_leader, self._is_leader = self._is_leader, False
        metrics.RELAY_LEADER.set(0)
        self._healthy, self._kafka_failures = True, 0  # a standby does not use Kafka
        with anyio.CancelScope(shield=True):
            await self._close_producer()
            # (A lost connection took the lock with it.)
            with anyio.move_on_after(_CLOSE_DEADLINE_S), contextlib.suppress(*_DB_ERRORS):
                await conn.execute("SELECT pg_advisory_unlock($1)", LEADER_LOCK_KEY)
        if was_leader:
            logger.info("outbox relay stepped down")

    # --- the leader's loop --------------------------------------------------------------

    async def _lead(self, conn: Connection) -> None:
        assert self._wake is not None
        self._is_leader = True
        metrics.RELAY_LEADER.set(1)
        logger.info("outbox relay is the leader")
        next_backlog = 0.0
        last_round = False
        while not last_round:
            # Stopping still gets one round: it publishes what the stages wrote while
            # they drained (unless Kafka is failing: then the next start does).
            last_round = self._stop_requested
            if last_round and self._kafka_failures:
                break
            if time.monotonic() >= next_backlog:
                await self._refresh_backlog(conn)
                next_backlog = time.monotonic() + _BACKLOG_REFRESH_S
            if self._producer is None and not await self._connect():
                await self._sleep(self._backoff(self._kafka_failures))
                continue
            self._wake = anyio.Event()  # a poke from now on ends the idle wait below
            rows = await outbox.fetch_due(conn, self._settings.batch_size, _now())
            if rows:
                result = await self._publish(rows)
                await self._settle(conn, result)
                if result.kafka_error is not None:
                    self._kafka_failed(result.kafka_error)
                    await self._close_producer()
                    await self._sleep(self._backoff(self._kafka_failures))
                    continue
                self._kafka_ok()
                if len(rows) == self._settings.batch_size:
                    continue  # more are waiting
            elif not last_round and (
                not self._healthy or time.monotonic() - self._last_contact > _IDLE_PROBE_S
            ):
                await self._probe()  # nothing to send: say whether Kafka is there anyway
            if not self._stop_requested:  # (a stop's poke may have gone to the old event)
                with anyio.move_on_after(self._settings.idle_poll_s):
                    await self._wake.wait()

    async def _connect(self) -> bool:
        """A fresh, started producer (embedded: after creating the topics), or False."""
        timeout_s = self._kafka.request_timeout_s
        if self._embedded:
            try:
                await broker.ensure_topics(
                    kafka_producer.bootstrap_servers(self._kafka),
                    journal.Topics.from_settings(self._events).names(),
                    self._kafka.topic_partitions,
                    self._kafka.topic_replication_factor,
                    timeout_s=timeout_s,
                )
            except exceptions.KafkaUnavailable as exc:
                # Not before the topics exist: Tansu would create them with 4 partitions.
                self._kafka_failed(str(exc))
                return False
        producer = kafka_producer.create(self._kafka, embedded=self._embedded)
        try:
            with anyio.fail_after(timeout_s + _CLOSE_DEADLINE_S):
                await producer.start()
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            await kafka_producer.close(producer, _CLOSE_DEADLINE_S)
            self._kafka_failed(kafka_producer.describe(exc))
            return False
        except BaseException:
            await kafka_producer.close(producer, _CLOSE_DEADLINE_S)
            raise
        self._producer = producer
        self._last_contact = time.monotonic()
        if self._kafka_failures == 0:
            self._healthy = True
        return True

    async def _probe(self) -> None:
        """Idle: ask Kafka for metadata, so readiness notices an outage without traffic."""
        assert self._producer is not None
        try:
            with anyio.fail_after(self._kafka.request_timeout_s):
                await self._producer.client.fetch_all_metadata()
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            self._kafka_failed(kafka_producer.describe(exc))
            await self._close_producer()
            return
        self._kafka_ok()

    async def _publish(self, rows: Sequence[outbox.OutboxRow]) -> relay_round.Round:
        """Send every row (in id order), await the deliveries, sort out what failed."""
        assert self._producer is not None
        result = relay_round.Round()
        in_flight: list[tuple[outbox.OutboxRow, asyncio.Future[object]]] = []
        refused_topics: dict[str, str] = {}
        for row in rows:
            if result.blocked(row):
                continue  # a row before it failed: it goes after that one
            if row.topic in refused_topics:
                result.fail(row, kafka_producer.TOPIC_REFUSED, refused_topics[row.topic])
                continue
            record = cloudevents.to_record(relay_round.cloud_event(row), self._events.source)
            try:
                future = await self._producer.send(
                    record.topic, record.value, key=record.key, headers=record.headers
                )
            except kafka_errors.KafkaError as exc:
                kind, error = await self._send_failure(row, exc, refused_topics)
                result.fail(row, kind, error)
                if kind is None:
                    break  # Kafka itself is failing: the rest waits for the next round
                continue
            in_flight.append((row, future))
        await self._await_reports(in_flight, result)
        return result

    async def _send_failure(
        self, row: outbox.OutboxRow, exc: kafka_errors.KafkaError, refused_topics: dict[str, str]
    ) -> tuple[str | None, str]:
        """What a refused send means: the row's own fault (a kind), or Kafka's (None)."""
        kind = kafka_producer.record_error_kind(exc)
        if (
            kind is None
            and isinstance(exc, kafka_errors.UnknownTopicOrPartitionError)
            and await self._topic_refused(row.topic)
        ):
            refused_topics[row.topic] = f"Kafka has no topic {row.topic!r}"
            return kafka_producer.TOPIC_REFUSED, refused_topics[row.topic]
        return kind, kafka_producer.describe(exc)

    async def _await_reports(
        self,
        in_flight: list[tuple[outbox.OutboxRow, asyncio.Future[object]]],
        result: relay_round.Round,
    ) -> None:
        if in_flight:
            # aiokafka expires a batch after request_timeout itself; this is a safety net.
            with anyio.move_on_after(2 * self._kafka.request_timeout_s + _CLOSE_DEADLINE_S):
                await asyncio.wait([future for _, future in in_flight])
        for row, future in in_flight:
            if not future.done():
                result.fail(row, None, "no delivery report from Kafka in time")
            elif (exc := future.exception()) is not None:
                result.fail(
                    row, kafka_producer.record_error_kind(exc), kafka_producer.describe(exc)
                )
            else:
                result.delivered.append(row)

    async def _topic_refused(self, topic: str) -> bool:
        """After a send found no metadata for ``topic``: is Kafka up without that topic?"""
        assert self._producer is not None
        try:
            with anyio.fail_after(self._kafka.request_timeout_s):
                cluster = await self._producer.client.fetch_all_metadata()
        except (kafka_errors.KafkaError, OSError, TimeoutError):
            return False  # Kafka is the problem, not the topic
        return topic not in cluster.topics()

    async def _settle(self, conn: Connection, result: relay_round.Round) -> None:
        """Record the round in one transaction: published rows, charged rows."""
        now = _now()
        published = result.publishable()
        by_error = result.failed_by_error()
        dead: list[int] = []
        async with conn.transaction():
            await outbox.mark_published(conn, [row.id for row in published], now)
            for (kind, error), failed in by_error.items():
                dead += await outbox.record_failure(
                    conn,
                    failed,
                    f"{kind}: {error}",
                    now,
                    self._settings.max_attempts,
                    self._backoff,
                )
        for row in published:
            metrics.OUTBOX_PUBLISHED.labels(row.topic).inc()
        for (kind, error), failed in by_error.items():
            metrics.KAFKA_PUBLISH_ERRORS.labels(kind).inc(len(failed))
            for row in failed:
                logger.warning(
                    "outbox event dead" if row.id in dead else "outbox event not published",
                    extra={
                        "event_id": str(row.event_id),
                        "outbox_id": row.id,
                        "topic": row.topic,
                        "document_id": row.message_key,
                        "attempts": row.attempts + 1,
                        "error": f"{kind}: {error}",
                    },
                )

    # --- health and backoff -------------------------------------------------------------

    def _kafka_failed(self, error: str) -> None:
        metrics.KAFKA_PUBLISH_ERRORS.labels(kafka_producer.UNAVAILABLE).inc()
        self.last_error = f"kafka: {error}"
        if self._healthy:
            logger.warning(
                "Kafka unavailable to the outbox relay", extra={"error": self.last_error}
            )
        self._healthy = False
        self._kafka_failures += 1

    def _kafka_ok(self) -> None:
        self._last_contact = time.monotonic()
        if not self._healthy:
            logger.info("Kafka available to the outbox relay again")
        self._healthy = True
        self._kafka_failures = 0
        self.last_error = None

    def _backoff(self, failures: int) -> float:
        """After ``failures`` in a row (Kafka's, or one row's): ``backoff_base_s`` doubled
        from the second on, capped at ``backoff_max_s``, jittered."""
        s = self._settings
        return jittered_backoff(s.backoff_base_s, max(failures - 1, 0), s.backoff_max_s)

    # --- helpers ------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, unless ``stop()`` comes first (a poke does not cut a backoff short)."""
        assert self._stopping is not None
        with anyio.move_on_after(seconds):
            await self._stopping.wait()

    async def _refresh_backlog(self, conn: Connection) -> None:
        waiting = await outbox.backlog(conn)
        metrics.OUTBOX_BACKLOG.set(waiting.unpublished)
        metrics.OUTBOX_OLDEST_AGE.set(waiting.oldest_age_s)
        metrics.OUTBOX_DEAD.set(waiting.dead)

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await kafka_producer.close(producer, _CLOSE_DEADLINE_S)


def _now() -> datetime:
    return datetime.now(UTC)
