"""Where a stage hands its work to the next: one named object per stage boundary.

Chosen once, when the app is wired. In ``events`` mode the handoff puts the
event in the next stage's inbox in this process (processing's mailbox, or after
a delay its retry schedule; monitoring's poll schedule). In ``scheduled`` mode
it is ``Nothing``: the next stage's timed database scan finds the work. Either
way the event is already in the database and, through the outbox, on its Kafka
topic, so a handoff that drops an event loses nothing: the sweeper re-feeds it.
A Kafka transport plugs in here too (it hands over nothing locally; the
consumers feed the inboxes).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from oms import domain
from oms.actors.mailbox import PriorityMailbox, Reservation
from oms.actors.monitoring import MonitoringStage
from oms.actors.schedule import DueSchedule

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)


class Slot(Protocol[E_contra]):
    """Room held for one event: ``put`` uses it, ``release`` gives it back."""

    def put(self, message: E_contra) -> None: ...

    def release(self) -> None: ...


class Handoff(Protocol[E_contra]):
    def hand_over(self, event: E_contra, delay_s: float = 0.0) -> None:
        """Pass ``event`` to the next stage, now or after ``delay_s``; never blocks."""
        ...


class Nothing:
    """Scheduled mode: nothing is handed over; the next stage's scan finds the work."""

    def reserve(self) -> Slot[object]:
        return _NoSlot()

    def hand_over(self, event: object, delay_s: float = 0.0) -> None:
        return None


class _NoSlot:
    def put(self, message: object) -> None:
        return None

    def release(self) -> None:
        return None


class ToProcessing:
    """``document.requested`` into processing's mailbox, or its retry schedule if later."""

    def __init__(
        self,
        mailbox: PriorityMailbox[domain.DocumentRequested],
        later: DueSchedule[domain.DocumentRequested],
    ) -> None:
        self._mailbox = mailbox
        self._later = later

    def reserve(self) -> Reservation[domain.DocumentRequested]:
        """Hold a slot, or raise Overloaded at once (intake answers 503, stores nothing)."""
        return self._mailbox.reserve()

    def hand_over(self, event: domain.DocumentRequested, delay_s: float = 0.0) -> None:
        # A full mailbox or schedule is counted there; the sweeper finds the document.
        if delay_s > 0:
            self._later.add(event, delay_s)
        else:
            self._mailbox.offer(event)


class ToMonitoring:
    """``document.submitted``: this process's monitoring stage watches the job."""

    def __init__(self, monitoring: MonitoringStage) -> None:
        self._monitoring = monitoring

    def hand_over(self, event: domain.DocumentSubmitted, delay_s: float = 0.0) -> None:
        self._monitoring.watch_submitted(event)


class RequestedHandoff(Handoff[domain.DocumentRequested], Protocol):
    """What intake needs: room reserved before storing, so a full stage answers 503."""

    def reserve(self) -> Slot[domain.DocumentRequested]: ...
