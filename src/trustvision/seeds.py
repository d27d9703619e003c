"""Seeds derived from a purpose, so that no random stream needs saved state."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(seed: int, purpose: str, *counters: int) -> int:
    """A 63-bit seed for one purpose at one point of a run (e.g. shuffling in epoch 3).

    Every random stream is re-derived from (seed, purpose, counters), so a run resumed at an
    epoch boundary draws exactly what an uninterrupted run would, without saving RNG state.
    """
    entropy = [seed, zlib.crc32(purpose.encode()), *counters]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
