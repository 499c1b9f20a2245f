"""Knobs of the Thunderhead simulator (``POST /_sim/config``, docs/thunderhead.md)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

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


class SimConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The simulator's knobs (docs/thunderhead.md); fault counts go down as they fire."""

    latency_s: _Seconds = 0.0
    processing_s_per_document: _Seconds = 0.1
    failure_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    json_prefix: bool = False
    inject: tuple[Inject, ...] = ()
    hang: Hang | None = None
    accept_then_hang: AcceptThenHang | None = None
    business_failure: BusinessFailure | None = None
    token_ttl_s: _Seconds = 3600.0
    client_id: str = "oms"
    client_secret: str = "oms-simulator-secret"
    batch_config_ids: tuple[str, ...] | None = None
    """The known batchConfigResIds; None knows every id that starts with ``BC-``."""
