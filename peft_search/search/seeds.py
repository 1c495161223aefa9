"""Seeds derived from names: a stage's racing order, a block's training seed, the fidelity pilot's
draw and the final tuning's sampler all come from the job's seed and what they are for, so the same
spec draws the same numbers on any machine and after any resume."""

from __future__ import annotations

import hashlib
import json


def derive_seed(*parts) -> int:
    """A 32-bit seed from any JSON-able parts, stable across runs and Python versions."""
    return int.from_bytes(hashlib.sha256(json.dumps(list(parts)).encode()).digest()[:4], "big")
