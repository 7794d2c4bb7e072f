"""What finishing a run will cost, before any call: `estimate(settings)` (behind `cai estimate` and `cai.estimate`).

It reads the input, the constitution, the few-shot file, the prices, and (read-only) the run folder's store and
the `--cache` file; it builds no model, sends nothing and creates nothing. Per role: calls, input tokens (the real
prompts, `cai.core.plan`), output tokens (an upper bound: every call's max_tokens), an expected figure where the
run or the cache has calls of that role's model (their mean tokens per call), and the cost at the standard and the
batch price and with `--fewshot 0`. Records the run already finished (or failed, without `--retry-failed`) are not
counted; a record left half-done is counted from the step it stopped at.

Tokens are counted with the model's own tokenizer where its provider has one offline (`Model.token_counter`: the
embedded GGUF's), else estimated as characters / 4 (`cai.core.pacing.estimate_tokens`, as `--tpm` does).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai import constitution as constitution_mod
from cai.calls import Request, cache_key
from cai.core.pacing import estimate_tokens
from cai.core.pipeline import wanted
from cai.core.plan import Planned, RecordPlan, plugin_plans
from cai.core.prices import Prices, call_price, cost
from cai.core.records import scan_input, scanned_records
from cai.core.scoring import make_labeler, make_scorer
from cai.providers.base import TokenCounter, provider_class
from cai.settings import RunSettings
from cai.store import Store
from cai.store.callcache import CacheReader

ROLE_ORDER = ("generator", "critic", "reviser", "grader", "judge")


class CharCounter:
    """Prompt tokens estimated as characters / 4, as `--tpm` pacing does."""

    method = "estimate: characters / 4"

    def count(self, request: Request) -> int:
        return estimate_tokens(request) - request.config.max_tokens

    def filler(self, tokens: int) -> str:
        return "word" * tokens


@dataclass
class Tally:
    """One role's planned calls and tokens (output: the max_tokens of each)."""

    model: str
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    from_cache: int = 0  # calls the --cache file answers (not sent, not paid)

    def add(self, tokens_in: int, request: Request) -> None:
        self.calls += 1
        self.tokens_in += tokens_in
        self.tokens_out += request.config.max_tokens


@dataclass
class Counting:
    """The counters by model spec, and what is counted already (a request asked twice is answered once)."""

    specs: dict[str, str]
    base_url: str | None = None
    cache: CacheReader | None = None
    counters: dict[str, TokenCounter] = field(default_factory=dict)
    identities: dict[str, Any] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def counter(self, role: str) -> TokenCounter:
        spec = self.specs[role]
        if spec not in self.counters:
            cls = provider_class(spec)
            self.counters[spec] = cls.token_counter(spec.partition(":")[2]) or CharCounter()
        return self.counters[spec]

    def identity(self, role: str) -> Any:
        """The role's model identity as a cache key names it: as the run stored it, else that of a model behind an
        API (built, not checked: no key needed); None for a local model the run has not loaded yet (its identity
        is its weights' hash)."""
        if role not in self.identities:
            spec = self.specs[role]
            cls = provider_class(spec)
            self.identities[role] = (None if cls.provider == "local" else
                                     cls(spec.partition(":")[2], self.base_url).identity())
        return self.identities[role]


def model_specs(settings: RunSettings, plugins: list[Any]) -> dict[str, str]:
    """role → model spec: the loop's roles and the plugins' (the grader, the judge)."""
    specs = settings.models.specs()
    for plugin in plugins:
        if plugin is not None:
            specs.update(plugin.models())
    return specs


def estimate(settings: RunSettings, prices: Prices, *, restart: bool = False) -> dict[str, Any]:
    """Every figure of the estimate (see the module docstring) as a JSON-serialisable dict."""
    const = constitution_mod.load(settings.loop.constitution)
    scan = scan_input(settings.io.input, settings.io.limit)
    scorer = make_scorer(settings.scoring.scorer, settings, const) if settings.scoring else None
    labeler = make_labeler(settings.labels.labeler, settings, const) if settings.labels else None
    specs = model_specs(settings, [scorer, labeler])
    counting = Counting(specs, settings.models.base_url)
    logprobs = {role: provider_class(spec).supports_logprobs for role, spec in specs.items()}
    with _run_store(settings, restart) as store, _cache(settings) as counting.cache:
        if store is not None:
            counting.identities = dict((store.get_meta("fingerprint") or {}).get("models") or {})
        statuses = store.statuses() if store is not None else {}
        todo = [r for r in itertools.islice(scanned_records(scan), scan.records)
                if wanted(statuses.get(r.id), settings.execution.retry_failed)]

        def tally(s: RunSettings, roles: tuple[str, ...] | None = None) -> dict[str, Tally]:
            plan = RecordPlan(s, const, scorer, labeler, lambda role, n: counting.counter(role).filler(n), logprobs)
            counting.seen = set()
            out: dict[str, Tally] = {}
            for rec in todo:
                done = {(st.kind, st.round): st for st in store.steps(rec.id)} if store is not None else {}
                for call, cached in _new_calls(plan.calls(rec, done), counting, store):
                    if roles is not None and call.role not in roles:
                        continue
                    t = out.setdefault(call.role, Tally(specs[call.role]))
                    if cached:
                        t.from_cache += 1
                    else:
                        t.add(counting.counter(call.role).count(call.request), call.request)
            return out

        roles = tally(settings)
        no_fewshot = (tally(settings.model_copy(update={"loop": settings.loop.model_copy(update={"fewshot": 0})}),
                            ("critic", "reviser")) if settings.loop.fewshot else {})
        seen = _stored_means(store, counting.cache, specs)
    figures = {role: _role(t, no_fewshot.get(role), seen.get(role), prices, counting.counter(role))
               for role, t in sorted(roles.items(), key=lambda kv: _order(kv[0]))}
    records = {"input": scan.records, "to_run": len(todo), "done": sum(s == "done" for s in statuses.values()),
               "failed": sum(s == "failed" for s in statuses.values())}
    return {"input": settings.io.input, "out": settings.io.out, "records": records, "roles": figures,
            "total": _total(figures), "notes": _notes(settings, figures, records, [scorer, labeler], logprobs)}


def _order(role: str) -> int:
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


@contextlib.contextmanager
def _run_store(settings: RunSettings, restart: bool) -> Iterator[Store | None]:
    """The run folder's store, read-only; None for a new run (or one `restart` moves aside)."""
    out = Path(settings.io.out)
    if restart or not Store.exists(out):
        yield None
        return
    store = Store.open_run(out, readonly=True, untouched=True)
    try:
        yield store
    finally:
        store.close()


def _new_calls(calls: Iterator[Planned], counting: Counting, store: Store | None) -> Iterator[tuple[Planned, bool]]:
    """(call, whether the `--cache` file answers it) for the calls that will not be answered by the run's store: an
    exact request asked before (in this plan, or stored) is answered from the store, as the engine does."""
    for call in calls:
        cached = False
        if call.exact:
            identity = counting.identity(call.role)
            key = cache_key(identity if identity is not None else {"spec": counting.specs[call.role]}, call.request)
            if key in counting.seen or (store is not None and store.get_call(key) is not None):
                continue
            counting.seen.add(key)
            cached = identity is not None and counting.cache is not None and counting.cache.has(key)
        yield call, cached


@contextlib.contextmanager
def _cache(settings: RunSettings) -> Iterator[CacheReader | None]:
    """The `--cache` file, read-only (None without the option)."""
    if not settings.execution.cache:
        yield None
        return
    reader = CacheReader(settings.execution.cache)
    try:
        yield reader
    finally:
        reader.close()


def _stored_means(store: Store | None, cache: CacheReader | None,
                  specs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per role: calls and tokens per call seen so far, from the run's stored calls, else from the `--cache`
    file's calls of the role's model (all roles of that model together)."""
    out: dict[str, dict[str, Any]] = {}
    if store is not None:
        for shared in (False, True):
            for role, t in store.token_totals(shared=shared).items():
                acc = out.setdefault(role, {"from": "run", "calls": 0, "tokens_in": 0, "tokens_out": 0})
                for k in ("calls", "tokens_in", "tokens_out"):
                    acc[k] += t[k]
    cached = cache.model_tokens() if cache is not None else {}
    for role, spec in specs.items():
        if role not in out and spec in cached:
            out[role] = {"from": "cache", **cached[spec]}
    return {r: v for r, v in out.items() if v["calls"]}


def _costs(tokens_in: int, tokens_out: int, spec: str, prices: Prices) -> dict[str, float] | None:
    rates, batch = call_price(spec, prices), call_price(spec, prices, batch=True)
    if rates is None or batch is None:
        return None
    tokens = {"tokens_in": tokens_in, "tokens_out": tokens_out}
    return {"standard": cost(tokens, rates), "batch": cost(tokens, batch)}


def _role(t: Tally, no_fewshot: Tally | None, seen: dict[str, Any] | None, prices: Prices,
          counter: TokenCounter) -> dict[str, Any]:
    costs = _costs(t.tokens_in, t.tokens_out, t.model, prices)
    if costs is not None:
        fewshot_in = no_fewshot.tokens_in if no_fewshot is not None else t.tokens_in
        costs["fewshot_0"] = (_costs(fewshot_in, t.tokens_out, t.model, prices) or {}).get("standard", 0.0)
    expected = None
    if seen is not None:
        per_in, per_out = seen["tokens_in"] / seen["calls"], seen["tokens_out"] / seen["calls"]
        expected = {"from": seen["from"], "calls_seen": seen["calls"], "tokens_in": round(per_in * t.calls),
                    "tokens_out": round(per_out * t.calls)}
        expected["cost"] = (_costs(expected["tokens_in"], expected["tokens_out"], t.model, prices) or {}).get(
            "standard")
    return {"model": t.model, "calls": t.calls, "from_cache": t.from_cache, "tokens_in": t.tokens_in,
            "tokens_out_max": t.tokens_out, "token_count": counter.method, "expected": expected, "cost": costs}


def _total(roles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    priced = [r["cost"] for r in roles.values() if r["cost"] is not None]
    total: dict[str, Any] = {k: sum(r[k] for r in roles.values())
                             for k in ("calls", "from_cache", "tokens_in", "tokens_out_max")}
    total["cost"] = ({k: sum(c[k] for c in priced) for k in ("standard", "batch", "fewshot_0")}
                     if len(priced) == len(roles) else None)
    expected = [r["expected"] for r in roles.values() if r["calls"]]
    total["expected"] = ({k: sum(e[k] for e in expected) for k in ("tokens_in", "tokens_out")}
                         if expected and all(e is not None for e in expected) else None)
    if total["expected"] is not None and all(e["cost"] is not None for e in expected):
        total["expected"]["cost"] = sum(e["cost"] for e in expected)
    return total


def _notes(settings: RunSettings, roles: dict[str, dict[str, Any]], records: dict[str, int],
           plugins: list[Any], logprobs: dict[str, bool]) -> list[str]:
    """One line per caveat of these figures."""
    loop, notes = settings.loop, []
    if records["done"] or records["failed"]:
        skipped = "failed" if settings.execution.retry_failed else "done or failed"
        notes.append(f"records the run already has {skipped} are not counted: {records['to_run']} of "
                     f"{records['input']} are left")
    if "critic" in roles:
        notes.append("a critic reply that is not a valid verdict is asked once more (a repair call): not counted")
        notes.append("prompts that quote a reply not written yet (a draft, critique or revision) count it as "
                     "max_tokens worth of text: an upper bound")
    if loop.stop_when_clean and loop.rounds:
        notes.append("--stop-when-clean: every round is counted, as if each found a violation (an upper bound)")
    for role, what in (("grader", "yes nor no"), ("judge", "A nor B")):
        if role in roles and logprobs.get(role):
            notes.append(f"a {role} answer whose top logprobs hold neither {what} is asked again by votes: "
                         "not counted")
    if settings.scoring is not None and settings.scoring.feedback:
        notes.append("the reviser's rule-based feedback (failed propositions) is counted only where the grade "
                     "is stored")
    if settings.labels is not None:
        notes.append("candidates not written yet are counted as all different; identical ones are judged once")
    if settings.execution.cache:
        hits = sum(r["from_cache"] for r in roles.values())
        notes.append(f"{hits} calls are answered by the --cache file (not counted as calls, tokens or cost); a call "
                     "whose prompt quotes a reply not written yet, or made by a local model before the run loaded "
                     "it, cannot be looked up and is counted")
    notes += [f"{p}: has no `requests` method, its calls are not counted" for p in plugin_plans(*plugins)]
    notes += [f"{role}: no price for {r['model']} in the price table; its cost is not counted"
              for role, r in roles.items() if r["cost"] is None]
    methods = sorted({(r["model"], r["token_count"]) for r in roles.values()})
    notes += [f"{model}: input tokens {method}" for model, method in methods]
    notes.append("costs are at the standard input price: a provider's prompt-cache discount is not counted")
    return notes
