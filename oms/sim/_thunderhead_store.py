"""The Thunderhead simulator's optional job file: one JSON line per job it accepted.

Each job is appended (one ``write``, then a flush) before the call that created it
is answered, so a simulator killed right after answering still knows the job when
it starts again on the same file. Times in the file are wall-clock epoch seconds;
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


class _Record(msgspec.Struct):
    """A job as one line of the file."""

    job_id: str
    batch_name: str
    batch_config_res_id: str
    submitted_at: float
    """Wall-clock epoch seconds."""
    per_document_s: float
    transactions: list[job_model.Transaction]
    fails: list[bool]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Record)


def _wall_minus_monotonic() -> float:
    return time.time() - time.monotonic()


class JobFile:
    """The open job file: read back once, then appended to job by job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def open(self) -> list[job_model.Job]:
        """Read the jobs back (oldest first) and open the file for appending.

        A line that does not decode is skipped with a warning; a torn last line (no
        newline: the writer was killed mid-write) is also cut off the file, so the
        next job appended does not land on the end of it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open, closed by close()
        self._file.seek(0)
        content = self._file.read()
        offset = _wall_minus_monotonic()
        jobs: list[job_model.Job] = []
        *lines, tail = content.split(b"\n")
        start = 0
        for number, line in enumerate(lines, start=1):
            try:
                jobs.append(_job(_decoder.decode(line), offset))
            except msgspec.DecodeError as exc:  # ValidationError is one
                logger.warning("thunderhead sim: %s line %d skipped: %s", self.path, number, exc)
            start += len(line) + 1
        if tail:
            try:
                jobs.append(_job(_decoder.decode(tail), offset))
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
        return jobs

    def append(self, job: job_model.Job) -> None:
        record = _Record(
            job_id=job.job_id,
            batch_name=job.batch_name,
            batch_config_res_id=job.batch_config_res_id,
            submitted_at=job.submitted_at + _wall_minus_monotonic(),
            per_document_s=job.per_document_s,
            transactions=job.transactions,
            fails=job.fails,
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


def _job(record: _Record, wall_minus_monotonic: float) -> job_model.Job:
    if len(record.fails) != len(record.transactions):
        raise msgspec.ValidationError(f"job {record.job_id}: fails and transactions differ")
    return job_model.Job(
        job_id=record.job_id,
        batch_name=record.batch_name,
        batch_config_res_id=record.batch_config_res_id,
        submitted_at=record.submitted_at - wall_minus_monotonic,
        per_document_s=record.per_document_s,
        transactions=record.transactions,
        fails=record.fails,
    )
