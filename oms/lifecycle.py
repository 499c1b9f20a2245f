"""One lifecycle for every long-running component: start, ready, drain, stop.

A component's ``run`` starts it, signals ``task_status.started()`` once it is
ready to work, and works until it is cancelled. ``drain`` asks it to take no new
work and finish what it holds. The app declares its components in dependency
order; ``run_all`` starts them in that order and, when asked to stop, drains
them in reverse, each within its own deadline, and then cancels it (River's
start/stop services, procrastinate's staged shutdown).

A component whose ``run`` ends while the app is running has died: its declared
``Policy`` either restarts it (after a growing, jittered pause) or stops the
whole app, which then drains as for an ordinary stop and raises
``ComponentDied`` so the process exits non-zero. Nothing limps on by accident.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus

from oms import exceptions, metrics
from oms.backoff import jittered_backoff

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Component(abc.ABC):
    """The shape every long-running part of OMS has (subclass it)."""

    name: str = "component"

    @abc.abstractmethod
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, call ``task_status.started()`` when ready, then work until cancelled."""

    async def drain(self) -> None:
        """Take no new work and finish what is in hand; the runner bounds it.

        The default is for components that hold no work of their own (timers,
        scans): stopping simply cancels them.
        """
        return None


class Policy(enum.Enum):
    """What happens when a component's ``run`` ends while the app runs."""

    RESTART = "restart"  # a timer or scan: its next pass recovers whatever it missed
    STOP = "stop"  # holds work or serves clients: stop the app rather than limp on


@dataclass(frozen=True)
class Declared:
    """One entry of the app's component list."""

    component: Component
    policy: Policy
    drain_deadline_s: float = 0.0


_RESTART_BASE_S = 0.5
_RESTART_MAX_S = 30.0
_CANCEL_WAIT_S = 5.0


class _Running:
    def __init__(self, declared: Declared) -> None:
        self.declared = declared
        self.scope = anyio.CancelScope()
        self.ended = anyio.Event()


async def run_all(
    components: Sequence[Declared],
    stop: anyio.Event,
    ready: Callable[[], T],
    *,
    task_status: TaskStatus[T],
) -> None:
    """Start ``components`` in order, report ``ready()``; on ``stop`` (or a death)
    drain them in reverse, each within its deadline."""
    stopping = anyio.Event()
    died: list[str] = []
    running: list[_Running] = []
    async with anyio.create_task_group() as tg:

        async def forward_stop() -> None:
            await stop.wait()
            stopping.set()

        tg.start_soon(forward_stop)
        for declared in components:
            entry = _Running(declared)
            await tg.start(_supervise, entry, stopping, died)
            running.append(entry)
        task_status.started(ready())
        await stopping.wait()
        with anyio.CancelScope(shield=True):
            for entry in reversed(running):
                await _stop(entry, died)
        tg.cancel_scope.cancel()  # the stop forwarder
    if died:
        raise exceptions.ComponentDied(", ".join(died))


class _Readiness:
    """Passes ``started()`` on and remembers it: an error before it is a start-up error."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self._outer = outer
        self.ready = False

    def started(self, value: None = None) -> None:
        if not self.ready:  # a restarted component says it again: nobody waits now
            self.ready = True
            self._outer.started(value)


async def _supervise(
    entry: _Running,
    stopping: anyio.Event,
    died: list[str],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    component = entry.declared.component
    readiness = _Readiness(task_status)
    restarts = 0
    try:
        with entry.scope:
            while True:
                started_at = anyio.current_time()
                try:
                    await component.run(task_status=readiness)
                    failure = "returned"
                except Exception as exc:
                    if not readiness.ready:
                        raise  # a start-up error: the app does not start
                    logger.exception("component failed", extra={"component": component.name})
                    failure = f"{type(exc).__name__}: {exc}"
                if stopping.is_set():
                    if failure != "returned" and entry.declared.policy is Policy.STOP:
                        died.append(component.name)  # failed while draining: exit non-zero
                    return
                metrics.COMPONENT_DEATHS.labels(component.name).inc()
                if entry.declared.policy is Policy.STOP:
                    logger.error(
                        "component died; stopping OMS",
                        extra={"component": component.name, "reason": failure},
                    )
                    died.append(component.name)
                    stopping.set()
                    return
                if anyio.current_time() - started_at > _RESTART_MAX_S:
                    restarts = 0  # it had been running fine: a new failure, not a loop
                delay = jittered_backoff(_RESTART_BASE_S, restarts, _RESTART_MAX_S)
                restarts += 1
                logger.warning(
                    "component died; restarting it",
                    extra={"component": component.name, "reason": failure, "restart_in_s": delay},
                )
                await anyio.sleep(delay)
    finally:
        entry.ended.set()


async def _stop(entry: _Running, died: list[str]) -> None:
    declared = entry.declared
    name = declared.component.name
    if not entry.ended.is_set():
        with anyio.move_on_after(declared.drain_deadline_s) as deadline:
            try:
                await declared.component.drain()
            except Exception:
                logger.exception("component failed to drain", extra={"component": name})
                if declared.policy is Policy.STOP:
                    died.append(name)  # work in hand may be unfinished: exit non-zero
        if deadline.cancelled_caught:
            logger.warning(
                "component did not drain in time; cancelling it", extra={"component": name}
            )
    entry.scope.cancel()
    with anyio.move_on_after(_CANCEL_WAIT_S):
        await entry.ended.wait()
    if not entry.ended.is_set():
        logger.error("component did not stop when cancelled", extra={"component": name})
