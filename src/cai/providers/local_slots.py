"""How many sequences the embedded (`local`) model decodes together in this process.

Kept apart from `cai.providers.local` so that the CLI and the library can set it without importing
llama-cpp-python. 1 is the single-sequence path (one `Llama.create_chat_completion` at a time); more is the
batched engine (`cai.providers.local_engine`): continuous batching with role prefixes kept warm.
`CAI_LOCAL_SLOTS` in the environment sets it for processes that are not told (e.g. Ray workers).

The default stays 1: batched sequences get logits that differ from the single path's in the last digits (up to
about 0.1 nats with this llama.cpp build; with the Q8_0 weights 1 greedy reply in 8 still changed at 4 slots), so
switching every caller over is a decision of its own;
`default_slots()` is the size suggested for this machine (`CAI_LOCAL_SLOTS=auto` takes it).
"""

from __future__ import annotations

import os

MAX_SLOTS = 64
_slots: int | None = None


def default_slots() -> int:
    """Sized to the machine: 4 sequences per core, at most 8 (beyond that a CPU gains little per step)."""
    return max(1, min(8, 4 * (os.cpu_count() or 1)))


def set_local_slots(n: int | None) -> None:
    """Set the slot count for this process (None: `CAI_LOCAL_SLOTS`, else 1)."""
    if n is not None and not 1 <= n <= MAX_SLOTS:
        raise ValueError(f"local slots must be between 1 and {MAX_SLOTS}, not {n}")
    global _slots
    _slots = n


def local_slots() -> int:
    """The slot count in force."""
    if _slots is not None:
        return _slots
    env = os.environ.get("CAI_LOCAL_SLOTS", "").strip().lower()
    if env == "auto":
        return default_slots()
    if env.isdigit() and 1 <= int(env) <= MAX_SLOTS:
        return int(env)
    return 1


def calls_in_flight(provider: str, wanted: int) -> int:
    """Calls worth keeping in flight to a model of `provider`: `wanted`, except for the embedded model, which
    takes as many as it has slots (with one, calls run one at a time in order, so more would only queue)."""
    return local_slots() if provider == "local" else max(wanted, 1)
