"""Furnace ownership across replicas: rendezvous hashing and furnace-id validation.

docs/design/serving.md 2.1: `owner(furnace_id) = argmax over s of blake2b(f"{furnace_id}:{s}")`,
stable across processes and Python versions (never the salted built-in `hash()`); growing the fleet
from N to N+1 shards moves only about 1/(N+1) of the furnaces. docs/design/serving.md 1.1 fixes the
id pattern, so an id can enter a Redis key without `:` or glob characters.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

FURNACE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_FURNACE_ID = re.compile(FURNACE_ID_PATTERN)


def validate_furnace_id(furnace_id: str) -> str:
    """Check a furnace id before it enters a Redis key, a metric label or a log line.

    Args:
        furnace_id: the id to check.

    Returns:
        The id, unchanged.

    Raises:
        ValueError: when the id is not 1-64 characters of letters, digits, `_` and `-`
            starting with a letter or digit.
    """
    # fullmatch, not match with `$`: `$` also matches before a trailing newline.
    if not isinstance(furnace_id, str) or _FURNACE_ID.fullmatch(furnace_id) is None:
        shown = repr(str(furnace_id)[:80])
        msg = (
            f"invalid furnace id {shown}: use 1-64 characters of letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    return furnace_id


def shard_weight(furnace_id: str, shard: int) -> bytes:
    """The rendezvous weight of one (furnace, shard) pair: blake2b of `"{furnace_id}:{shard}"`.

    Args:
        furnace_id: a furnace id.
        shard: a shard index.

    Returns:
        The 64-byte digest; digests compare as big-endian integers.
    """
    return hashlib.blake2b(f"{furnace_id}:{shard}".encode()).digest()


def owner(furnace_id: str, count: int) -> int:
    """The shard that owns a furnace (highest-random-weight hashing, docs/design/serving.md 2.1).

    Args:
        furnace_id: a furnace id (validated).
        count: number of shards, >= 1.

    Returns:
        The owning shard index in [0, count); equal weights (never seen) go to the lower index.

    Raises:
        ValueError: for an invalid furnace id or count < 1.
    """
    validate_furnace_id(furnace_id)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        msg = f"shard count must be an integer >= 1, got {count!r}"
        raise ValueError(msg)
    best, best_weight = 0, shard_weight(furnace_id, 0)
    for s in range(1, count):
        weight = shard_weight(furnace_id, s)
        if weight > best_weight:
            best, best_weight = s, weight
    return best


def owned(furnace_ids: list[str] | tuple[str, ...], index: int, count: int) -> list[str]:
    """The furnaces of `furnace_ids` that shard `index` of `count` owns, in input order.

    Args:
        furnace_ids: candidate furnace ids (the configured fleet plus discovered streams).
        index: this replica's shard index.
        count: number of shards.

    Returns:
        The owned ids, duplicates removed.

    Raises:
        ValueError: for an index outside [0, count), or an invalid id or count.
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < max(count, 1):
        msg = f"shard index must be in [0, {count}), got {index!r}"
        raise ValueError(msg)
    return [f for f in dict.fromkeys(furnace_ids) if owner(f, count) == index]
