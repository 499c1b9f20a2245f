"""``lifecycle.run_all``: start in order, drain in reverse, deadlines, deaths by policy."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from oms import exceptions, lifecycle
from oms.lifecycle import Declared, Policy


class Recorded(lifecycle.Component):
    """A component that writes what happens to it in a shared log."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        dies_after_s: float | None = None,
        drain_hangs: bool = False,
        drain_breaks: bool = False,
    ) -> None:
        self.name = name
        self._log = log
        self._dies_after_s = dies_after_s
        self._drain_hangs = drain_hangs
        self._drain_breaks = drain_breaks
        self.runs = 0
        self.third_run = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == 3:
            self.third_run.set()
        self._log.append(f"start {self.name}")
        task_status.started()
        self._log.append(f"ready {self.name}")  # past started(): the component works
        try:
            if self._dies_after_s is not None:
                await anyio.sleep(self._dies_after_s)
                raise RuntimeError(f"{self.name} broke")
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self._log.append(f"cancelled {self.name}")
            raise

    async def drain(self) -> None:
        self._log.append(f"drain {self.name}")
        if self._drain_hangs:
            await anyio.sleep_forever()
        if self._drain_breaks:
            raise RuntimeError(f"{self.name} broke while draining")


async def test_components_start_in_order_and_drain_in_reverse() -> None:
    log: list[str] = []
    parts = [Recorded(name, log) for name in ("db", "stage", "http")]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        ready = await tg.start(
            lifecycle.run_all, [Declared(p, Policy.STOP, 1.0) for p in parts], stop, lambda: "up"
        )
        assert ready == "up"
        assert log == [
            f"{step} {p}" for p in ("db", "stage", "http") for step in ("start", "ready")
        ]
        stop.set()
    assert log[6:] == [
        "drain http",
        "cancelled http",
        "drain stage",
        "cancelled stage",
        "drain db",
        "cancelled db",
    ]


async def test_a_drain_that_outlives_its_deadline_is_cancelled() -> None:
    log: list[str] = []
    stuck = Recorded("stuck", log, drain_hangs=True)
    stop = anyio.Event()
    stop.set()  # stop as soon as it has started
    with anyio.fail_after(3):
        await lifecycle.run_all(
            [Declared(stuck, Policy.STOP, 0.1)],
            stop,
            lambda: None,
            task_status=anyio.TASK_STATUS_IGNORED,
        )
    assert log == ["start stuck", "ready stuck", "drain stuck", "cancelled stuck"]


async def test_a_dying_restart_component_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "_RESTART_BASE_S", 0.01)
    log: list[str] = []
    flaky = Recorded("timer", log, dies_after_s=0.01)
    steady = Recorded("stage", log)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(
            lifecycle.run_all,
            [Declared(flaky, Policy.RESTART), Declared(steady, Policy.STOP, 1.0)],
            stop,
            lambda: None,
        )
        with anyio.fail_after(5):
            await flaky.third_run.wait()
        assert steady.runs == 1  # the others run on undisturbed
        assert "drain stage" not in log
        stop.set()
    # Each run got past started() and worked: a restart is a real restart.
    assert log.count("ready timer") >= 3


async def test_a_dying_stop_component_stops_the_rest_and_raises_component_died() -> None:
    log: list[str] = []
    first = Recorded("pool", log)
    doomed = Recorded("writer", log, dies_after_s=0.05)
    last = Recorded("http", log)
    components = [
        Declared(first, Policy.STOP, 1.0),
        Declared(doomed, Policy.STOP, 1.0),
        Declared(last, Policy.STOP, 1.0),
    ]
    with anyio.fail_after(5), pytest.raises(exceptions.ComponentDied) as died:
        await lifecycle.run_all(
            components, anyio.Event(), lambda: None, task_status=anyio.TASK_STATUS_IGNORED
        )
    assert died.value.names == "writer"
    assert doomed.runs == 1  # never restarted
    # The others drained in reverse, as for an ordinary stop; the dead one is not drained.
    assert [e for e in log if e.startswith("drain")] == ["drain http", "drain pool"]
    assert "cancelled http" in log
    assert "cancelled pool" in log


async def test_a_stop_component_that_breaks_while_draining_still_fails_the_app() -> None:
    log: list[str] = []
    writer = Recorded("writer", log, drain_breaks=True)
    stop = anyio.Event()
    stop.set()
    with pytest.raises(exceptions.ComponentDied, match="writer"):
        await lifecycle.run_all(
            [Declared(writer, Policy.STOP, 1.0)],
            stop,
            lambda: None,
            task_status=anyio.TASK_STATUS_IGNORED,
        )
