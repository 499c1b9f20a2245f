"""Re-offer messages to a mailbox at a later time: the in-process retry schedule.

One heap and one task, however many documents wait: no sleeping coroutine per
document. It is a convenience, not the record — the retry time is in the
database, and the sweeper re-feeds whatever this schedule forgets (a restart, a
full mailbox, a full schedule).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from typing import Generic

import anyio
from anyio.abc import TaskStatus

from oms import metrics
from oms.bus import M, PriorityMailbox

logger = logging.getLogger(__name__)


def jittered_backoff(base_s: float, tries: int, cap_s: float) -> float:
    """``base_s * 2**tries`` capped at ``cap_s``, then jittered to 50-100% of it, so
    work that failed together does not come back together."""
    return min(cap_s, base_s * 2 ** min(tries, 30)) * random.uniform(0.5, 1.0)


class DelayedRequeue(Generic[M]):
    def __init__(self, name: str, mailbox: PriorityMailbox[M], max_size: int) -> None:
        self._name = name
        self._mailbox = mailbox
        self._max_size = max_size
        self._heap: list[tuple[float, int, M]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, message: M, delay_s: float) -> bool:
        if len(self._heap) >= self._max_size:
            return False
        heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), message))
        metrics.RETRY_SCHEDULE_SIZE.labels(self._name).set(len(self._heap))
        self._changed.set()
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            wait = self._heap[0][0] - time.monotonic() if self._heap else None
            if wait is None or wait > 0:
                self._changed = anyio.Event()
                with anyio.move_on_after(wait if wait is not None else float("inf")):
                    await self._changed.wait()
                continue
            _, _, message = heapq.heappop(self._heap)
            metrics.RETRY_SCHEDULE_SIZE.labels(self._name).set(len(self._heap))
            if not self._mailbox.offer(message):
                logger.warning(
                    "mailbox full: a due retry is left to the sweeper", extra={"pool": self._name}
                )
