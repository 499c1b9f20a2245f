"""Helpers for the end-to-end Event Hub tests: the document API, readiness and Kafka consumers.

Two ways to read ``oms.document.status``:

- ``StatusSubscriber``: confluent-kafka (librdkafka) in subscribe mode, in a
  thread of its own, as a real Event Hub consumer would. Its group join against
  the embedded Tansu broker is slow (up to ~25 s), so start it early.
- ``consume_status``: aiokafka without a group (every partition, from the
  beginning): fast, used where a broker restart would upset a group.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer

from oms import app

SOURCE_HEADERS = {"Authorization": f"Bearer {app.DEMO_SOURCE_KEY}"}
ADMIN_HEADERS = {"Authorization": f"Bearer {app.DEMO_ADMIN_KEY}"}
STATUS_TOPIC = "oms.document.status"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
EVENT_TYPES = {
    "COMPLETED": "oms.document.completed",
    "FAILED": "oms.document.failed",
    "CANCELLED": "oms.document.cancelled",
}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


# --- the document API -------------------------------------------------------------------------


async def submit(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """POST one document that must be accepted (202); its id."""
    async with http.post(f"{url}/v1/documents", json=body, headers=SOURCE_HEADERS) as response:
        text = await response.text()
        assert response.status == 202, text
        assert response.headers["Location"].endswith(json.loads(text)["id"])
        return str(json.loads(text)["id"])


async def list_documents(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    """Every document of the demo source system, by id (``GET /v1/documents`` pages)."""
    found: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(1000):  # bounded: 200 000 documents
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with http.get(
            f"{url}/v1/documents", params=params, headers=SOURCE_HEADERS
        ) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        found.update({item["id"]: item for item in page["items"]})
        cursor = page["next_cursor"]
        if not cursor:
            return found
    raise AssertionError("too many pages")


async def wait_statuses(
    http: aiohttp.ClientSession,
    url: str,
    ids: Iterable[str],
    accept: frozenset[str] = FINAL,
    timeout_s: float = 60.0,
) -> dict[str, dict[str, Any]]:
    """Bounded: until every one of ``ids`` has a status in ``accept``; all documents, by id."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        documents = await list_documents(http, url)
        waiting = {i: documents.get(i, {}).get("status") for i in wanted}
        waiting = {i: s for i, s in waiting.items() if s not in accept}
        if not waiting:
            return documents
        if time.monotonic() > deadline:
            raise AssertionError(f"not {sorted(accept)} after {timeout_s} s: {waiting}")
        await asyncio.sleep(0.2)


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


async def wait_readiness(
    http: aiohttp.ClientSession, url: str, status: int, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Bounded: until ``/readyz`` answers ``status``; its report."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, report = await readiness(http, url)
        if code == status:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz not {status} after {timeout_s} s: {code} {report}")
        await asyncio.sleep(0.2)


async def admin_post(http: aiohttp.ClientSession, url: str, path: str) -> dict[str, Any]:
    async with http.post(f"{url}{path}", headers=ADMIN_HEADERS) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def outbox_backlog(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/admin/api/outbox/backlog", headers=ADMIN_HEADERS) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One record of the status topic, as received."""

    key: bytes | None
    value: bytes | None
    header_list: list[tuple[str, bytes]]

    @property
    def headers(self) -> dict[str, bytes]:
        return dict(self.header_list)

    @property
    def ce_id(self) -> str:
        return self.headers["ce_id"].decode()

    @property
    def subject(self) -> str:
        return self.headers["ce_subject"].decode()

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.headers["ce_time"].decode())


def distinct(events: Iterable[Event]) -> dict[str, Event]:
    """First occurrence of each ``ce_id`` (consumers dedupe by it)."""
    found: dict[str, Event] = {}
    for event in events:
        found.setdefault(event.ce_id, event)
    return found


def by_subject(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Distinct events per ``ce_subject`` (the document id)."""
    found: dict[str, list[Event]] = {}
    for event in distinct(events).values():
        found.setdefault(event.subject, []).append(event)
    return found


def check_final_event(event: Event, document: dict[str, Any], source: str = "/oms") -> None:
    """``event`` is the binary-mode CloudEvent announcing ``document``'s final status."""
    document_id = document["id"]
    status = document["status"]
    names = [name for name, _ in event.header_list]
    assert len(names) == len(set(names)), names  # every attribute once
    headers = event.headers
    assert headers["ce_specversion"] == b"1.0"
    assert uuid.UUID(headers["ce_id"].decode())
    assert headers["ce_type"].decode() == EVENT_TYPES[status], (headers, status)
    assert headers["ce_source"].decode() == source
    assert RFC3339_UTC.match(headers["ce_time"].decode()), headers["ce_time"]
    assert headers["ce_subject"].decode() == document_id
    assert headers["content-type"] == b"application/json"
    assert event.key == document_id.encode()
    assert event.value is not None
    data = json.loads(event.value)
    assert data["document_id"] == document_id
    assert data["status"] == status
    assert data["source_system"] == app.DEMO_SOURCE_SYSTEM
    assert data["client_reference"] == document["client_reference"]
    if status == "COMPLETED":
        assert data["job_id"]
        assert data["outputs"], data
        for output in data["outputs"]:
            # Thunderhead's channelType, by name (docs/thunderhead.md): email is HTML.
            assert output["channel"] == THUNDERHEAD_CHANNEL[document["channel"]], output
            assert output["document_name"]
            assert output["part_location"]
            assert output["mime_type"]
    elif status == "FAILED":
        assert data["reason"], data
        if data["reason"] == "generation_failed":  # Thunderhead's own words reach the user
            assert any(m.get("msg") or m.get("msgText") for m in data["messages"]), data
    else:
        assert data["cancelled_by"], data


THUNDERHEAD_CHANNEL = {"email": "HTML", "print": "PRINT", "sms": "SMS", "archive": "PRINT"}


# --- consumers ------------------------------------------------------------------------------


@dataclass
class StatusSubscriber:
    """A confluent-kafka consumer in subscribe mode, polling in a thread until stopped.

    Bounded: the thread stops by itself after ``max_s`` seconds.
    """

    bootstrap: str
    topic: str = STATUS_TOPIC
    max_s: float = 150.0
    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_at: float | None = None
    started_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _failure: BaseException | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="status-subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"e2e-{uuid.uuid4().hex[:12]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,
                }
            )
            try:
                consumer.subscribe([self.topic])
                deadline = time.monotonic() + self.max_s
                while not self._stop.is_set() and time.monotonic() < deadline:
                    message = consumer.poll(0.2)
                    if message is None:
                        continue
                    if message.error():
                        self.errors.append(str(message.error()))
                        continue
                    event = Event(message.key(), message.value(), list(message.headers() or []))
                    with self._lock:
                        if self.first_at is None:
                            self.first_at = time.monotonic()
                        self.events.append(event)
            finally:
                consumer.close()
        except BaseException as exc:  # surfaced by stop()
            self._failure = exc

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    async def wait_for(self, subjects: Iterable[str], timeout_s: float) -> list[Event]:
        """Bounded: until an event of every one of ``subjects`` arrived; all events so far."""
        wanted = set(subjects)
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.snapshot()
            missing = wanted - {e.subject for e in events}
            if not missing:
                return events
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"the subscriber stopped: {self._failure!r} {self.errors}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no event after {timeout_s} s for {len(missing)} of {len(wanted)} "
                    f"documents (received {len(events)}; errors {self.errors[-5:]})"
                )
            await asyncio.sleep(0.2)

    async def stop(self) -> list[Event]:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            assert not self._thread.is_alive(), "the subscriber did not stop"
        if self._failure is not None:
            raise AssertionError(f"the subscriber failed: {self._failure!r}")
        return self.snapshot()


async def consume_status(
    bootstrap: str,
    subjects: Iterable[str],
    timeout_s: float = 30.0,
    grace_s: float = 1.0,
    topic: str = STATUS_TOPIC,
) -> list[Event]:
    """aiokafka, no group, every partition from the beginning: at least one event for each of
    ``subjects``, then whatever else arrives within ``grace_s`` (duplicates, strays)."""
    wanted = set(subjects)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    events: list[Event] = []
    try:
        deadline = time.monotonic() + timeout_s
        while wanted - {e.subject for e in events}:
            if time.monotonic() > deadline:
                missing = wanted - {e.subject for e in events}
                raise AssertionError(
                    f"no event after {timeout_s} s for {len(missing)} of {len(wanted)} documents"
                )
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                events += [Event(r.key, r.value, list(r.headers)) for r in records]
        grace_ends = time.monotonic() + grace_s
        while (left := grace_ends - time.monotonic()) > 0:
            batch = await consumer.getmany(timeout_ms=max(1, int(left * 1000)))
            for records in batch.values():
                events += [Event(r.key, r.value, list(r.headers)) for r in records]
    finally:
        await consumer.stop()
    return events
