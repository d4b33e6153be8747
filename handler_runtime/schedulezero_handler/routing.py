"""Which replica of a handler serves a call: rendezvous hashing of the call id.

Every endpoint gets a weight from a hash of (call id, endpoint); the call goes
to the heaviest. So all attempts of one run, and its re-sends after an
operator failover, reach the same pod while that pod is there, which is what
lets the pod's reply cache answer them. When a pod goes, only its own calls
move (each to the next in its ranking); when one comes, it takes an even share
from each of the others. Nothing is shared between callers but the hash: two
operator replicas route a run alike without talking to each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable


def weight(key: bytes, endpoint: str) -> int:
    """The endpoint's weight for ``key``: 64 bits of BLAKE2b, the same on every machine and run."""
    digest = hashlib.blake2b(endpoint.encode(), digest_size=8, key=key[:64])
    return int.from_bytes(digest.digest(), "big")


def rank(key: bytes, endpoints: Iterable[str]) -> list[str]:
    """``endpoints`` from the first choice for ``key`` to the last."""
    return sorted(endpoints, key=lambda endpoint: (weight(key, endpoint), endpoint), reverse=True)


def choose(key: bytes, endpoints: Iterable[str], *, down: Callable[[str], bool] | None = None) -> str | None:
    """The first endpoint in ``key``'s ranking that is not ``down``.

    When all are down the first of the ranking is chosen all the same: a call
    then waits for that pod to come back (or fails Unavailable), rather than
    going to a pod chosen by chance. None when there is no endpoint at all.
    """
    best: str | None = None
    best_weight = -1
    fallback: str | None = None
    fallback_weight = -1
    for endpoint in endpoints:
        heavy = weight(key, endpoint)
        if heavy > fallback_weight or (heavy == fallback_weight and fallback is not None and endpoint > fallback):
            fallback, fallback_weight = endpoint, heavy
        if down is not None and down(endpoint):
            continue
        if heavy > best_weight or (heavy == best_weight and best is not None and endpoint > best):
            best, best_weight = endpoint, heavy
    return best if best is not None else fallback
