"""Progress on stderr and the cost estimate of an invocation by a price table (`cai.core.prices`).

On a terminal one rich line updates in place. Otherwise (cron, CI, nohup, a notebook's log) a line is printed every
`every` seconds, whether or not a record finished meanwhile, by a daemon thread that never keeps the process alive:
as text, or (`fmt="json"`) as one JSON object per line, `{"event": "progress", ...}` (`Progress.figures`).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cai.core.engine import Engine
from cai.core.prices import call_price
from cai.core.prices import cost as priced
from cai.options import LogFormat


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
    """Records (done, failed, in flight), records/s, calls, tokens, cost and ETA of this invocation, on stderr.

    On a terminal with `fmt="text"` the line updates in place; otherwise a line is printed every `every` s (with
    `every` 0: each time a record finishes). `quiet`: nothing is printed. `stop()` ends the display (the caller's
    summary is then the last line)."""

    def __init__(self, quiet: bool = False, prices: dict[str, dict[str, float]] | None = None,
                 every: float = 30.0, fmt: LogFormat = "text") -> None:
        self.console = Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.prices = prices or {}
        self.every = every
        self.format: LogFormat = fmt
        self.total = 0
        self.done = 0  # records finished, failed ones included
        self.failed = 0
        self.started = 0  # records begun (a runner that does not report them leaves it 0: in flight unknown)
        self.skipped = 0  # records of the input this invocation leaves alone (done before)
        self.engine: Engine | None = None
        self.created = self.t0 = time.monotonic()
        self.live: Live | None = None
        self._last_line = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, total: int, engine: Engine) -> None:
        self.total, self.engine, self.t0 = total, engine, time.monotonic()
        self._last_line = self.t0
        if self.quiet:
            return
        if self.format == "text" and self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4,
                             get_renderable=self.render, transient=False)
            self.live.start()
        elif self.every > 0:
            self._ticker = threading.Thread(target=self._tick, name="cai-progress", daemon=True)
            self._ticker.start()

    def record_started(self) -> None:
        self.started += 1

    def record_skipped(self) -> None:
        self.skipped += 1

    def record_done(self, status: str) -> None:
        self.done += 1
        self.failed += status == "failed"
        if self.live is None and not self.quiet:
            self._line_if_due()

    def _tick(self) -> None:
        while not self._stopped.wait(max(self._last_line + self.every - time.monotonic(), 0.0)):
            self._line_if_due()

    def _line_if_due(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_line < self.every or self._stopped.is_set():
                return
            self._last_line = now
            self.console.print(self.line(), markup=False, highlight=False)

    def figures(self) -> dict[str, Any]:
        """This invocation so far: `records` (the input's), `skipped` (left alone: done before), `done` and `failed`
        (finished now), `in_flight` (None if the runner does not report records it begins), `rate_per_s` (finished
        records), calls, tokens, retries, 429s, unparsed verdicts, `estimated_cost_usd` (None: no price) and
        `eta_s` (None: not known yet)."""
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        remaining = self.total - self.skipped - self.done
        out: dict[str, Any] = {
            "elapsed_s": round(elapsed, 3), "records": self.total, "skipped": self.skipped,
            "done": self.done - self.failed, "failed": self.failed,
            "in_flight": self.started - self.done if self.started else None, "rate_per_s": round(rate, 4)}
        st = self.engine.stats if self.engine is not None else None
        out.update({"calls": st.calls if st else 0, "tokens_in": st.tokens_in if st else 0,
                    "tokens_out": st.tokens_out if st else 0, "retries": st.retries if st else 0,
                    "rate_limited": st.rate_limited if st else 0, "unparsed": st.unparsed if st else 0,
                    "estimated_cost_usd": cost(self.engine, self.prices) if self.engine is not None else None,
                    "eta_s": round(remaining / rate, 1) if rate > 0 and remaining > 0 else None})
        return out

    def render(self) -> Text:
        f = self.figures()
        parts = [f"records {f['skipped'] + f['done'] + f['failed']}/{f['records']}", f"{f['rate_per_s']:.2f}/s"]
        parts += [f"{label} {f[key]}" for label, key in (("skipped", "skipped"), ("failed", "failed"),
                                                         ("in flight", "in_flight")) if f[key]]
        parts += [f"calls {f['calls']}", f"tokens {f['tokens_in']}→{f['tokens_out']}"]
        parts += [f"{label} {f[key]}" for label, key in (("retries", "retries"), ("429s", "rate_limited"),
                                                         ("unparsed", "unparsed")) if f[key]]
        c = f["estimated_cost_usd"]
        parts.append(f"${c:.4f}" if c is not None else "$?")
        if f["eta_s"] is not None:
            parts.append(f"ETA {f['eta_s']:.0f}s")
        return Text(" · ".join(parts))

    def line(self) -> str:
        """One progress line in the chosen format."""
        if self.format == "json":
            return json.dumps({"event": "progress", **self.figures()}, ensure_ascii=False)
        return self.render().plain

    def stop(self) -> None:
        """End the display: the live line, or the timer (at once, without a last line)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        with self._lock:
            self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def summary(self) -> dict[str, Any]:
        """This invocation's time (since the Progress was made) and estimated cost."""
        c = cost(self.engine, self.prices) if self.engine else None
        return {"elapsed_s": round(time.monotonic() - self.created, 3), "estimated_cost_usd": c}
