"""The group-commit writer against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import anyio
import asyncpg
import msgspec
import pytest

from oms import config, domain, exceptions, metrics
from oms.db.pool import create_pool
from oms.intake.writer import DocumentWriter
from oms.store import documents, journal

TOPICS = journal.Topics.from_settings(config.EventsSettings())


def _item(reference: str, data: bytes = b"{}") -> documents.NewDocument:
    request = domain.DocumentRequest(
        client_reference=reference,
        document_type="policy_renewal_notice",
        channel=domain.Channel.EMAIL,
        language="en",
        brand="acme",
        recipient=domain.Recipient(name="Ada", email="ada@example.com"),
        data=msgspec.Raw(data),
    )
    return documents.NewDocument(
        id=domain.uuid7(),
        source_system="acme-policy",
        request=request,
        trace_id="0" * 32,
        created_at=datetime.now(UTC),
    )


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, config.DatabaseSettings(pool_min_size=1))
    yield pool
    await pool.close()


async def _run_writer(
    pool: asyncpg.Pool, settings: config.IntakeSettings, items: Sequence[documents.NewDocument]
) -> list[documents.InsertOutcome | BaseException]:
    writer = DocumentWriter(pool, TOPICS, settings)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        results = await asyncio.gather(*(writer.write(i) for i in items), return_exceptions=True)
        writer.close()
    return results


def _batch_sizes() -> tuple[float, float]:
    samples = {s.name: s.value for s in metrics.COMMIT_BATCH_SIZE.collect()[0].samples}
    return samples["oms_intake_commit_batch_size_count"], samples[
        "oms_intake_commit_batch_size_sum"
    ]


async def test_concurrent_requests_share_transactions(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    count_before, rows_before = _batch_sizes()
    items = [_item(f"G-{n}") for n in range(200)]
    results = await _run_writer(pool, config.IntakeSettings(), items)
    count_after, rows_after = _batch_sizes()

    assert all(isinstance(r, documents.Inserted) for r in results)
    assert rows_after - rows_before == 200
    assert count_after - count_before < 200 / 4  # on average 4+ requests per transaction
    assert await db.fetchval("SELECT count(*) FROM documents") == 200
    assert await db.fetchval("SELECT count(*) FROM document_timeline") == 200
    assert await db.fetchval("SELECT count(*) FROM outbox") == 200


async def test_one_bad_row_does_not_fail_its_group(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # PostgreSQL's jsonb refuses \u0000: a real per-row failure inside one statement.
    items = [_item(f"B-{n}") for n in range(9)] + [_item("BAD", b'{"x": "\\u0000"}')]
    results = await _run_writer(pool, config.IntakeSettings(), items)

    assert isinstance(results[-1], exceptions.UnstorableRequest)  # the client's fault: a 422
    assert all(isinstance(r, documents.Inserted) for r in results[:-1])
    stored = {
        r["client_reference"] for r in await db.fetch("SELECT client_reference FROM documents")
    }
    assert stored == {f"B-{n}" for n in range(9)}


async def test_duplicate_reference_in_one_group_stores_one_row(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    first, second = _item("SAME"), _item("SAME")
    results = await _run_writer(pool, config.IntakeSettings(), [first, second])

    inserted = [r for r in results if isinstance(r, documents.Inserted)]
    duplicates = [r for r in results if isinstance(r, documents.DuplicateReference)]
    assert len(inserted) == 1
    assert len(duplicates) == 1
    assert duplicates[0].existing_id == inserted[0].document_id
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_naive_variant_writes_one_request_per_transaction(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    count_before, _ = _batch_sizes()
    items = [_item(f"N-{n}") for n in range(20)]
    results = await _run_writer(pool, config.IntakeSettings(group_commit=False), items)
    count_after, _ = _batch_sizes()
    assert all(isinstance(r, documents.Inserted) for r in results)
    assert count_after - count_before == 20
    assert await db.fetchval("SELECT count(*) FROM documents") == 20


async def test_writing_after_close_is_refused(pool: asyncpg.Pool) -> None:
    writer = DocumentWriter(pool, TOPICS, config.IntakeSettings())
    writer.close()
    with pytest.raises(exceptions.Overloaded):
        await writer.write(_item("LATE"))
