"""SingleFlight: one call per key, its outcome shared, its task the owner's."""

from __future__ import annotations

import anyio
import pytest

from oms.singleflight import SingleFlight


class Closed(Exception):
    pass


class Call:
    """A call that counts its runs and finishes when told to."""

    def __init__(self, result: str = "value", error: Exception | None = None) -> None:
        self.runs = 0
        self.result = result
        self.error = error
        self.release = anyio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_callers_of_one_key_share_one_call_and_its_value() -> None:
    call = Call()
    results: list[str] = []
    async with anyio.create_task_group() as tg:
        flights: SingleFlight[str, str] = SingleFlight(tg, closed=Closed)

        async def ask() -> None:
            results.append(await flights.join("k", call))

        for _ in range(3):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        call.release.set()
    assert call.runs == 1
    assert results == ["value"] * 3


async def test_an_error_is_shared_and_never_reaches_the_task_group() -> None:
    call = Call(error=ValueError("down"))
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        flights: SingleFlight[str, str] = SingleFlight(tg, closed=Closed)

        async def ask() -> None:
            try:
                await flights.join("k", call)
            except ValueError as exc:
                errors.append(exc)

        tg.start_soon(ask)
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        call.release.set()
    assert call.runs == 1
    assert len(errors) == 2
    assert errors[0] is errors[1]


async def test_keys_fly_apart_and_a_finished_call_is_not_reused() -> None:
    async with anyio.create_task_group() as tg:
        flights: SingleFlight[str, str] = SingleFlight(tg, closed=Closed)
        a, b = Call("a"), Call("b")
        a.release.set()
        b.release.set()
        assert await flights.join("a", a) == "a"
        assert await flights.join("b", b) == "b"
        assert await flights.join("a", a) == "a"
    assert (a.runs, b.runs) == (2, 1)


async def test_a_caller_giving_up_does_not_cancel_the_call() -> None:
    call = Call()
    async with anyio.create_task_group() as tg:
        flights: SingleFlight[str, str] = SingleFlight(tg, closed=Closed)
        with anyio.move_on_after(0.01):
            await flights.join("k", call)
        call.release.set()
        assert await flights.join("k", call) == "value"
    assert call.runs == 1


async def test_start_runs_the_call_without_waiting() -> None:
    call = Call()
    async with anyio.create_task_group() as tg:
        flights: SingleFlight[str, str] = SingleFlight(tg, closed=Closed)
        flights.start("k", call)
        flights.start("k", call)
        await anyio.wait_all_tasks_blocked()
        assert call.runs == 1
        call.release.set()
    assert call.runs == 1


async def test_waiters_get_the_closed_error_when_the_owner_cancels_the_call() -> None:
    call = Call()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as waiters:
        async with anyio.create_task_group() as owner:
            flights: SingleFlight[str, str] = SingleFlight(owner, closed=lambda: Closed("closed"))

            async def ask() -> None:
                with pytest.raises(Closed) as caught:
                    await flights.join("k", call)
                errors.append(caught.value)

            waiters.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            owner.cancel_scope.cancel()
    assert [str(e) for e in errors] == ["closed"]
