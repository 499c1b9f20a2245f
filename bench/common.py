"""What the benchmark scripts share: ports, database names, a request body."""

from __future__ import annotations

import socket

import msgspec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


def document(reference: str) -> bytes:
    """A valid request for the Reference Data the simulator ships (email, acme, en)."""
    return msgspec.json.encode(
        {
            "client_reference": reference,
            "document_type": "policy_renewal_notice",
            "channel": "email",
            "language": "en",
            "brand": "acme",
            "priority": "normal",
            "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "data": {"policy_number": "P-123", "premium": "123.45"},
        }
    )
