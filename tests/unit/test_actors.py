"""The mailbox's ordering and capacity, and the pool's supervision, drain and pause."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from oms import exceptions
from oms.actors.mailbox import PriorityMailbox
from oms.actors.pool import ActorPool, PoolSettings


class Msg(msgspec.Struct, frozen=True):
    name: str
    priority_rank: int = 1
    fairness_key: str = "a"


def _drain(mailbox: PriorityMailbox[Msg]) -> list[str]:
    taken = []
    while len(mailbox):
        message = mailbox._pop()
        assert message is not None
        taken.append(message.name)
    return taken


def test_urgent_overtakes_a_queued_bulk_load() -> None:
    mailbox = PriorityMailbox[Msg]("t", 100)
    for n in range(50):
        assert mailbox.offer(Msg(f"bulk{n}", priority_rank=2))
    mailbox.offer(Msg("normal", priority_rank=1))
    mailbox.offer(Msg("urgent", priority_rank=0))
    taken = _drain(mailbox)
    assert taken[:2] == ["urgent", "normal"]
    assert taken[2:] == [f"bulk{n}" for n in range(50)]  # FIFO within a system


def test_source_systems_are_served_in_turn_within_a_priority() -> None:
    mailbox = PriorityMailbox[Msg]("t", 100)
    for n in range(5):
        mailbox.offer(Msg(f"big{n}", fairness_key="big"))
    mailbox.offer(Msg("small0", fairness_key="small"))
    mailbox.offer(Msg("small1", fairness_key="small"))
    assert _drain(mailbox) == ["big0", "small0", "big1", "small1", "big2", "big3", "big4"]


def test_reservations_count_against_capacity_and_refuse_when_full() -> None:
    mailbox = PriorityMailbox[Msg]("t", 2)
    first = mailbox.reserve()
    mailbox.offer(Msg("x"))
    with pytest.raises(exceptions.Overloaded):
        mailbox.reserve()
    assert not mailbox.offer(Msg("y"))
    first.release()
    second = mailbox.reserve()
    second.put(Msg("z"))
    assert _drain(mailbox) == ["x", "z"]
    with pytest.raises(RuntimeError):
        second.put(Msg("again"))


def test_put_back_goes_first_in_line() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10)
    mailbox.offer(Msg("a1"))
    mailbox.offer(Msg("b1", fairness_key="b"))
    mailbox.put_back(Msg("retry", fairness_key="b"))
    assert _drain(mailbox)[0] == "retry"


async def test_a_crashing_actor_is_replaced_and_its_message_not_lost() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10)
    handled: list[str] = []
    crashes = {"boom": 2}
    done = anyio.Event()

    async def handler(message: Msg) -> None:
        if crashes.get(message.name, 0) > 0:
            crashes[message.name] -= 1
            raise RuntimeError("actor bug")
        handled.append(message.name)
        if len(handled) == 2:
            done.set()

    pool = ActorPool("t", mailbox, handler, PoolSettings(size=1, restart_backoff_s=0.01))
    for name in ("boom", "after"):
        mailbox.offer(Msg(name))
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await done.wait()
        await pool.drain()
    assert handled == ["boom", "after"]  # redelivered first, then the rest


async def test_a_poison_message_is_set_aside_after_max_redeliveries() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10)
    attempts: list[str] = []
    done = anyio.Event()

    async def handler(message: Msg) -> None:
        attempts.append(message.name)
        if message.name == "fine":
            done.set()
        if message.name == "poison":
            raise RuntimeError("always")

    settings = PoolSettings(size=1, restart_backoff_s=0.001, max_redeliveries=3)
    pool = ActorPool("t", mailbox, handler, settings)
    mailbox.offer(Msg("poison"))
    mailbox.offer(Msg("fine"))
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await done.wait()
        await pool.drain()
    assert attempts.count("poison") == 4  # first delivery + 3 redeliveries


async def test_stop_drains_the_message_in_hand() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10)
    started, finished = anyio.Event(), []

    async def handler(message: Msg) -> None:
        started.set()
        await anyio.sleep(0.2)
        finished.append(message.name)

    pool = ActorPool("t", mailbox, handler, PoolSettings(size=2))
    mailbox.offer(Msg("slow"))
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await started.wait()
        await pool.drain()
        assert finished == ["slow"]


async def test_pause_holds_messages_until_resume() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10)
    handled: list[str] = []
    done = anyio.Event()

    async def handler(message: Msg) -> None:
        handled.append(message.name)
        done.set()

    pool = ActorPool("t", mailbox, handler, PoolSettings(size=2))
    pool.pause()
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        mailbox.offer(Msg("held"))
        await anyio.sleep(0.1)
        assert handled == []
        assert pool.paused
        pool.resume()
        with anyio.fail_after(5):
            await done.wait()
        await pool.drain()
    assert handled == ["held"]


def test_a_keyed_mailbox_never_queues_the_same_key_twice() -> None:
    mailbox = PriorityMailbox[Msg]("t", 10, key=lambda m: m.name)
    assert mailbox.offer(Msg("doc-1"))
    assert mailbox.offer(Msg("doc-1"))  # already waiting: accepted, not queued again
    assert mailbox.holds(Msg("doc-1"))
    assert len(mailbox) == 1
    assert _drain(mailbox) == ["doc-1"]
    assert not mailbox.holds(Msg("doc-1"))
    assert mailbox.offer(Msg("doc-1"))  # taken out: may come again
    assert len(mailbox) == 1
