"""The Thunderhead simulator's optional job file: one JSON line per submission it took.

A line is a job (``"kind": "job"``) or a reference sent to generateDocument
(``"kind": "document"``, kept so duplicates still count after a restart). Each is
appended (one ``write``, then a flush) before the call that made it is answered, so
a simulator killed right after answering still knows it when it starts again on the
same file. Times in the file are wall-clock epoch seconds;
in memory a job keeps ``time.monotonic()`` time, so both ways are converted here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import BinaryIO

import msgspec

from oms.sim import _thunderhead_jobs as job_model

logger = logging.getLogger(__name__)


class _JobRecord(msgspec.Struct, tag="job", tag_field="kind"):
    """A job as one line of the file."""

    job_id: int
    batch_name: str
    batch_config_res_id: int
    correlation_field: str
    submitted_at: float
    """Wall-clock epoch seconds."""
    per_document_s: float
    transactions: list[job_model.Transaction]
    fails: list[bool]


class _DocumentRecord(msgspec.Struct, tag="document", tag_field="kind"):
    """A generateDocument reference as one line of the file."""

    reference: str
    submitted_at: float
    """Wall-clock epoch seconds."""


Entry = job_model.Job | job_model.Generated

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_JobRecord | _DocumentRecord)


def _wall_minus_monotonic() -> float:
    return time.time() - time.monotonic()


class JobFile:
    """The open job file: read back once, then appended to entry by entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def open(self) -> list[Entry]:
        """Read the entries back (oldest first) and open the file for appending.

        A line that does not decode is skipped with a warning; a torn last line (no
        newline: the writer was killed mid-write) is also cut off the file, so the
        next entry appended does not land on the end of it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open, closed by close()
        self._file.seek(0)
        content = self._file.read()
        offset = _wall_minus_monotonic()
        entries: list[Entry] = []
        *lines, tail = content.split(b"\n")
        start = 0
        for number, line in enumerate(lines, start=1):
            try:
                entries.append(_entry(_decoder.decode(line), offset))
            except msgspec.DecodeError as exc:  # ValidationError is one
                logger.warning("thunderhead sim: %s line %d skipped: %s", self.path, number, exc)
            start += len(line) + 1
        if tail:
            try:
                entries.append(_entry(_decoder.decode(tail), offset))
            except msgspec.DecodeError as exc:
                logger.warning(
                    "thunderhead sim: %s ends in a torn line (%d bytes), cut off: %s",
                    self.path,
                    len(tail),
                    exc,
                )
                self._file.truncate(start)
            else:  # whole, only its newline missing
                self._write(b"\n")
        return entries

    def append(self, entry: Entry) -> None:
        record: _JobRecord | _DocumentRecord
        submitted_at = entry.submitted_at + _wall_minus_monotonic()
        if isinstance(entry, job_model.Generated):
            record = _DocumentRecord(reference=entry.reference, submitted_at=submitted_at)
        else:
            record = _JobRecord(
                job_id=entry.job_id,
                batch_name=entry.batch_name,
                batch_config_res_id=entry.batch_config_res_id,
                correlation_field=entry.correlation_field,
                submitted_at=submitted_at,
                per_document_s=entry.per_document_s,
                transactions=entry.transactions,
                fails=entry.fails,
            )
        self._write(_encoder.encode(record) + b"\n")

    def truncate(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError(f"job file {self.path} is not open")
        self._file.write(data)  # "a" mode: always at the end, whatever was read
        self._file.flush()


def _entry(record: _JobRecord | _DocumentRecord, wall_minus_monotonic: float) -> Entry:
    submitted_at = record.submitted_at - wall_minus_monotonic
    if isinstance(record, _DocumentRecord):
        return job_model.Generated(reference=record.reference, submitted_at=submitted_at)
    if len(record.fails) != len(record.transactions):
        raise msgspec.ValidationError(f"job {record.job_id}: fails and transactions differ")
    return job_model.Job(
        job_id=record.job_id,
        batch_name=record.batch_name,
        batch_config_res_id=record.batch_config_res_id,
        correlation_field=record.correlation_field,
        submitted_at=submitted_at,
        per_document_s=record.per_document_s,
        transactions=record.transactions,
        fails=record.fails,
    )
