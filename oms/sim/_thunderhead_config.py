"""Paths and knobs of the Thunderhead simulator (``POST /_sim/config``, docs/thunderhead.md)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

TOKEN_PATH = "/one/oauth2Server/token"
API_PATH = "/one/oauth2/api/v12/job"
MAX_REQUEST_BYTES = 10_000_000
"""Thunderhead's cap on one request body ("10MB", docs/thunderhead.md); one byte more is a 413."""

Endpoint = Literal["token", "submitBatch", "jobStatus", "findByReference", "generateDocument"]
ENDPOINTS: tuple[Endpoint, ...] = (
    "token",
    "submitBatch",
    "jobStatus",
    "findByReference",
    "generateDocument",
)

_Count = Annotated[int, msgspec.Meta(ge=0)]
_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]


class Inject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next ``count`` calls to ``endpoint`` (any API call if None) answer ``status``."""

    status: Annotated[int, msgspec.Meta(ge=400, le=599)]
    count: _Count = 1
    endpoint: Endpoint | None = None
    retry_after: _Count | None = None
    """Seconds for a ``Retry-After`` header; None sends none."""


class Hang(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next ``count`` calls to ``endpoint`` (any API call if None) never answer."""

    count: _Count = 1
    endpoint: Endpoint | None = None


class AcceptThenHang(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next ``count`` valid submitBatch calls create their job, then never answer."""

    count: _Count = 1


class BusinessFailure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The next ``count`` valid submitBatch calls answer 200 with no job, in ``form``."""

    count: _Count = 1
    form: Literal["exceptions", "jobMessages"] = "exceptions"


class Chaos(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Random faults: each API call but the token's draws one outcome with these odds.

    Unlike the counted knobs it never runs out, so a soak test meets faults throughout;
    ``seed`` makes the sequence of outcomes repeatable.
    """

    error_500: _Probability = 0.0
    error_503: _Probability = 0.0
    hang: _Probability = 0.0
    unauthorized: _Probability = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.error_500 + self.error_503 + self.hang + self.unauthorized > 1:
            raise ValueError("chaos probabilities add up to more than 1")


class SimConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The simulator's knobs (docs/thunderhead.md); fault counts go down as they fire."""

    latency_s: _Seconds = 0.0
    processing_s_per_document: _Seconds = 0.1
    failure_ratio: _Probability = 0.0
    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    rate_limit_retry_after: bool = True
    json_prefix: bool = True
    client_auth: Literal["basic", "form", "either"] = "either"
    correlation_field: Annotated[str, msgspec.Meta(min_length=1)] = "correlationReference"
    max_request_bytes: Annotated[int, msgspec.Meta(ge=0)] = MAX_REQUEST_BYTES
    reject_marker: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    chaos: Chaos | None = None
    inject: tuple[Inject, ...] = ()
    hang: Hang | None = None
    accept_then_hang: AcceptThenHang | None = None
    business_failure: BusinessFailure | None = None
    token_ttl_s: _Seconds = 3600.0
    client_id: str = "oms"
    client_secret: str = "oms-simulator-secret"
    username: str | None = None
    """The password grant's user; None accepts any non-blank username and password."""
    password: str | None = None
    batch_config_ids: tuple[Annotated[int, msgspec.Meta(gt=0)], ...] | None = None
    """The known batchConfigResIds; None knows every positive integer."""
