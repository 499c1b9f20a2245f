"""The one backoff formula OMS uses for every retry, wait and restart."""

from __future__ import annotations

import random


def jittered_backoff(base_s: float, tries: int, cap_s: float) -> float:
    """``base_s * 2**tries`` capped at ``cap_s``, then jittered to 50-100% of it, so
    work that failed together does not come back together."""
    return min(cap_s, base_s * 2 ** min(tries, 30)) * random.uniform(0.5, 1.0)
