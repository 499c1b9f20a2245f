"""``python -m oms.kafka.tail``: print the final-status CloudEvents as they arrive.

Reads ``oms.document.status`` (or ``--topic``) from the configured Kafka (the
embedded broker's address by default) and prints one JSON line per event: the
``ce_*`` attributes, the key and the data. ``--from-beginning`` replays what the
broker still holds. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import msgspec
from aiokafka import AIOKafkaConsumer

from oms import config

_encode = msgspec.json.Encoder().encode


def _bootstrap(settings: config.Settings) -> str:
    kafka = settings.kafka
    return kafka.bootstrap_servers or f"{kafka.embedded_host}:{kafka.embedded_port}"


def render(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> str:
    event: dict[str, object] = {
        name.removeprefix("ce_"): raw.decode(errors="replace")
        for name, raw in headers
        if name.startswith("ce_")
    }
    event["key"] = key.decode(errors="replace") if key else None
    try:
        event["data"] = msgspec.json.decode(value) if value else None
    except msgspec.DecodeError:
        event["data"] = (value or b"").decode(errors="replace")
    return _encode(event).decode()


async def tail(bootstrap: str, topic: str, from_beginning: bool, limit: int | None) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        seen = 0
        async for message in consumer:
            print(render(message.key, message.value, list(message.headers)), flush=True)
            seen += 1
            if limit is not None and seen >= limit:
                return
    finally:
        await consumer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m oms.kafka.tail", description=__doc__)
    parser.add_argument("--bootstrap", help="host:port (default: from config)")
    parser.add_argument("--topic", help="default: events.topic_status")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--limit", type=int, help="stop after this many events")
    args = parser.parse_args()
    settings = config.load()
    bootstrap = args.bootstrap or _bootstrap(settings)
    topic = args.topic or settings.events.topic_status
    print(f"tailing {topic} on {bootstrap}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail(bootstrap, topic, args.from_beginning, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
