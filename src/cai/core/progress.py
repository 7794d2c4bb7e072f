"""Progress on stderr (rich) and the cost estimate of an invocation by a price table (`cai.core.prices`)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cai.core.engine import Engine
from cai.core.prices import call_price
from cai.core.prices import cost as priced


def cost(engine: Engine, prices: dict[str, dict[str, float]]) -> float | None:
    """Estimated USD for this invocation's calls (cached and cache-write prompt tokens at their prices); None
    if a model has no known price."""
    total = 0.0
    for role, st in engine.stats.roles.items():
        rates = call_price(engine.models[role].spec, prices)
        if rates is None:
            return None
        total += priced(vars(st), rates)
    return total


class Progress:
    """One live status line: records, records/s, calls, tokens, cost, ETA.

    On a terminal the line updates in place; otherwise (logs, CI) a line is printed every `every` s.
    """

    def __init__(self, quiet: bool = False, prices: dict[str, dict[str, float]] | None = None) -> None:
        self.console = Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.prices = prices or {}
        self.total = 0
        self.done = 0
        self.failed = 0
        self.engine: Engine | None = None
        self.t0 = time.monotonic()
        self.live: Live | None = None
        self.every = 10.0
        self._last_line = time.monotonic()

    def start(self, total: int, engine: Engine) -> None:
        self.total, self.engine, self.t0 = total, engine, time.monotonic()
        if not self.quiet and self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4,
                             get_renderable=self.render, transient=False)
            self.live.start()

    def record_done(self, status: str) -> None:
        self.done += 1
        self.failed += status == "failed"
        now = time.monotonic()
        if self.live is None and not self.quiet and now - self._last_line >= self.every:
            self._last_line = now
            self.console.print(self.render(), markup=False, highlight=False)

    def render(self) -> Text:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        parts = [f"records {self.done}/{self.total}", f"{rate:.2f}/s"]
        if self.failed:
            parts.append(f"failed {self.failed}")
        if self.engine is not None:
            st = self.engine.stats
            parts += [f"calls {st.calls}", f"tokens {st.tokens_in}→{st.tokens_out}"]
            parts += [f"{label} {n}" for label, n in (("retries", st.retries), ("429s", st.rate_limited),
                                                      ("unparsed", st.unparsed)) if n]
            c = cost(self.engine, self.prices)
            parts.append(f"${c:.4f}" if c is not None else "$?")
        remaining = self.total - self.done
        if rate > 0 and remaining > 0:
            parts.append(f"ETA {remaining / rate:.0f}s")
        return Text(" · ".join(parts))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def summary(self) -> dict[str, Any]:
        c = cost(self.engine, self.prices) if self.engine else None
        return {"elapsed_s": round(time.monotonic() - self.t0, 3), "estimated_cost_usd": c}
