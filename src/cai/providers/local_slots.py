"""How many sequences the embedded (`local`) model decodes together in this process.

Kept apart from `cai.providers.local` so that the CLI and the library can set it without importing
llama-cpp-python. 1 is the single-sequence path (one `Llama.create_chat_completion` at a time); more is the
batched engine (`cai.providers.local_engine`): continuous batching with role prefixes kept warm.
`CAI_LOCAL_SLOTS` in the environment sets it for processes that are not told (e.g. Ray workers).
"""

from __future__ import annotations

import os

MAX_SLOTS = 64
_slots: int | None = None


def default_slots() -> int:
    """Sized to the machine: 4 sequences per core, at most 8 (beyond that a CPU gains little per step)."""
    return max(1, min(8, 4 * (os.cpu_count() or 1)))


def set_local_slots(n: int | None) -> None:
    """Set the slot count for this process (None: `CAI_LOCAL_SLOTS`, else `default_slots()`)."""
    if n is not None and not 1 <= n <= MAX_SLOTS:
        raise ValueError(f"local slots must be between 1 and {MAX_SLOTS}, not {n}")
    global _slots
    _slots = n


def local_slots() -> int:
    """The slot count in force."""
    if _slots is not None:
        return _slots
    env = os.environ.get("CAI_LOCAL_SLOTS", "").strip()
    if env.isdigit() and 1 <= int(env) <= MAX_SLOTS:
        return int(env)
    return default_slots()
