"""The Thunderhead client's Prometheus metrics, created once at import with fixed labels.

Labels: ``endpoint`` is one of ``token``, ``submitBatch``, ``jobStatus``,
``findByReference``, ``generateDocument``; ``outcome`` is one of ``ok``,
``rejected``, ``unauthorized``, ``throttled`` (429/503), ``server_error``,
``timeout``, ``connection_error``, ``outcome_unknown``, ``invalid_answer``,
``paused`` (refused locally while Thunderhead asked OMS to wait), ``misconfigured``
(404/405 on an API path: the path or its version is wrong for the tenant); ``reason`` is
``rate`` (token bucket) or ``pause`` (after a 429/503).
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)


def _once(kind: type[M], name: str, documentation: str, *args: Any, **kwargs: Any) -> M:
    """Create a metric, or return the one already registered (a module re-imported in tests)."""
    try:
        return kind(name, documentation, *args, **kwargs)
    except ValueError:
        existing = REGISTRY._names_to_collectors.get(name)  # no public lookup exists
        if not isinstance(existing, kind):
            raise
        return existing


CALLS = _once(
    Counter,
    "oms_thunderhead_calls_total",
    "Thunderhead HTTP calls by endpoint and outcome.",
    ["endpoint", "outcome"],
)
LATENCY = _once(
    Histogram,
    "oms_thunderhead_call_seconds",
    "Thunderhead HTTP call latency by endpoint (limiter waits excluded).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAITS = _once(
    Counter,
    "oms_thunderhead_ratelimit_waits_total",
    "Calls that waited at the Thunderhead limiter, by reason.",
    ["reason"],
)
RATE_LIMIT_WAIT_SECONDS = _once(
    Counter,
    "oms_thunderhead_ratelimit_wait_seconds_total",
    "Seconds spent waiting at the Thunderhead limiter, by reason.",
    ["reason"],
)
TOKEN_REFRESHES = _once(
    Counter,
    "oms_thunderhead_token_refreshes_total",
    "OAuth2 token fetches by trigger (expiry: none cached or due; 401) and outcome (ok, error).",
    ["trigger", "outcome"],
)
IN_FLIGHT = _once(
    Gauge,
    "oms_thunderhead_in_flight",
    "Thunderhead HTTP requests in flight.",
)
RATE_LIMIT = _once(
    Gauge,
    "oms_thunderhead_rate_limit_per_second",
    "The Thunderhead call rate in force (below the setting for a while after a 429).",
)
TOKEN_OK = _once(
    Gauge,
    "oms_thunderhead_token_ok",
    "1 if the last OAuth2 token fetch succeeded, 0 if Thunderhead refused it (credentials); "
    "NaN before the first fetch.",
)
