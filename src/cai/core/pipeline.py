"""The critique loop over a stream of records: draft → (critique → revise) × rounds.

Each record moves through its steps on its own; each finished step is queued to the store's group
commit as it finishes, so a re-run continues from the last committed step of every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cai.calls import GenConfig
from cai.constitution import Constitution, Principle, sample_principles
from cai.core.engine import Deferred, Engine
from cai.core.pacing import estimate_tokens
from cai.core.records import InputRecord, iter_records
from cai.core.scoring import Labeler, Scorer
from cai.core.stages import (
    Authority,
    clean_revision,
    critique_request,
    draft_request,
    parse_verdict,
    repair_request,
    revise_request,
)
from cai.errors import BudgetExhausted, ProviderError
from cai.settings import RunSettings
from cai.store.sink import RecordSink, RecordWriteFailed
from cai.store.steps import Kind, Step

Done = dict[tuple[Kind, int], Step]  # a record's stored steps by (kind, round)

# A verdict is JSON: cut off mid-object it cannot be parsed, so the critic always gets at least this many tokens.
CRITIC_MIN_TOKENS = 128


def critic_config(settings: RunSettings) -> GenConfig:
    """The generation settings of critique calls: the run's, with at least CRITIC_MIN_TOKENS."""
    cfg = settings.generation
    return cfg if cfg.max_tokens >= CRITIC_MIN_TOKENS else cfg.model_copy(update={"max_tokens": CRITIC_MIN_TOKENS})


def least_request_tokens(settings: RunSettings, const: Constitution) -> int:
    """A floor on the --tpm estimate (`cai.core.pacing.estimate_tokens`) of the largest request every record makes:
    its draft asks for max_tokens, and with rounds its critique is at least that of an empty prompt and draft
    under the constitution's shortest principle."""
    need = settings.generation.max_tokens
    if settings.loop.rounds:
        empty, authority = [{"role": "user", "content": ""}], Authority.of(const)
        need = max(need, min(estimate_tokens(critique_request(empty, "", p, critic_config(settings),
                                                              examples=settings.loop.fewshot, authority=authority))
                             for p in const.active))
    return need


def wanted(status: str | None, retry_failed: bool) -> bool:
    """Whether an invocation works on a record the store has with `status` (None: not yet): one neither done nor
    failed, or with `retry_failed` only a failed one."""
    return status == "failed" if retry_failed else status not in ("done", "failed")


class Pipeline:
    """Runs records through the loop. `on_begin()` is called as each record begins in this process, `on_done(status)`
    as each record finishes, `on_skip()` for each input record this invocation leaves alone; `scorer` (if any)
    grades the draft and each revision; `labeler` (if any) labels the candidates (`loop.candidates` samples and/or
    the draft with its revisions) once the loop is done. `records` (if given) caps the input at the records
    validated before the run: rows appended to the file while it runs wait for the next invocation (which checks
    them).
    `source` (if given) replaces the input file (e.g. the records a run already stored).

    With an engine that defers calls (a batch job), a record goes as far as the answers it has and then waits
    (`Deferred`): neither done nor failed, counted as `waiting`, and the next pass continues it."""

    def __init__(self, settings: RunSettings, const: Constitution, store: RecordSink, engine: Engine,
                 on_done: Callable[[str], None] | None = None, scorer: Scorer | None = None,
                 records: int | None = None, source: Iterable[InputRecord] | None = None,
                 labeler: Labeler | None = None, on_begin: Callable[[], None] | None = None,
                 on_skip: Callable[[], None] | None = None) -> None:
        self.s = settings
        self.records = records
        self.source = source
        self.labeler = labeler
        self.scorer = scorer
        self.const = const
        self.authority = Authority.of(const)  # the chain of command, for a constitution with rules or defaults
        self.store = store
        self.engine = engine
        self.on_done = on_done or (lambda status: None)
        self.on_begin = on_begin or (lambda: None)
        self.on_skip = on_skip or (lambda: None)
        self.fatal: BaseException | None = None
        self.budget_stop: BudgetExhausted | None = None  # set when a call did not fit in the budget
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "waiting": 0}

    def todo(self) -> Iterator[tuple[InputRecord, bool]]:
        """(record, known to the store) for each input record this invocation should work on (the others are
        counted as skipped)."""
        statuses = self.store.statuses()
        source = self.source if self.source is not None else iter_records(self.s.io.input, self.s.io.limit)
        for rec in itertools.islice(source, self.records):
            status = statuses.get(rec.id)
            if wanted(status, self.s.execution.retry_failed):
                yield rec, status is not None
            else:
                self.counts["skipped"] += 1
                self.on_skip()

    async def run(self) -> dict[str, int]:
        """`concurrency` workers take the next record as soon as they finish one (as a bare loop
        would), so no event-loop round trip sits between one record's last call and the next's first."""
        todo = self.todo()

        async def worker() -> None:
            for rec, known in todo:  # one shared iterator; next() never awaits, so no two workers race
                await self.process(rec, known)
                await self.store.keep_up()
                if self.budget_stop is not None:  # the budget is spent: no record is started after this
                    return

        workers = [asyncio.create_task(worker()) for _ in range(max(1, self.s.execution.concurrency))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:  # a fatal error (e.g. bad credentials) stops the others
                if not t.cancelled() and t.exception() is not None:
                    self.fatal = t.exception()
                    break
            await self.store.flush()
        finally:
            for t in workers:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*workers, return_exceptions=True)
        if self.fatal is not None:
            raise self.fatal
        return self.counts

    async def process(self, rec: InputRecord, known: bool) -> None:
        self.on_begin()
        if not known:
            self.store.add_record(rec.idx, rec.id, rec.messages, rec.extra)
        try:
            await self._steps(rec)
        except Deferred:
            self.counts["waiting"] += 1
            return
        except BudgetExhausted as e:  # the record keeps what it committed and goes on in a later invocation
            self.budget_stop = self.budget_stop or e
            self.counts["stopped"] = self.counts.get("stopped", 0) + 1
            return
        except ProviderError as e:
            if e.fatal:
                raise
            self.store.add_error(rec.id, e.stage or "draft", e)
            self.counts["failed"] += 1
            self.on_done("failed")
            return
        except RecordWriteFailed:  # the store wrote its error row; spend nothing more on it
            self.counts["failed"] += 1
            self.on_done("failed")
            return
        self.store.set_status(rec.id, "done")
        self.counts["done"] += 1
        self.on_done("done")

    async def _steps(self, rec: InputRecord) -> None:
        loop, cfg = self.s.loop, self.s.generation
        steps = self.store.steps(rec.id)
        done: Done = {(st.kind, st.round): st for st in steps}
        seq = itertools.count(max((st.seq for st in steps), default=-1) + 1)  # next free step numbers
        principles = sample_principles(self.const, cfg.seed, rec.messages, loop.rounds)
        if (Kind.DRAFT, 0) in done:
            response = done[(Kind.DRAFT, 0)].data["response"]
        else:
            req = draft_request(rec.messages, cfg)
            comp = await _staged("draft", self.engine.call("generator", req, rec.id, ("draft", 0)))
            response = comp.text.strip()
            self._add(rec, Step(next(seq), Kind.DRAFT, 0, {"response": response,
                                                            "finish_reason": comp.finish_reason}))
        score = await self._grade(rec, response, 0, done, seq)
        candidates = [{"source": "draft", "n": 0, "response": response, "score": score}]
        for rnd, principle in enumerate(principles, start=1):
            crit = done.get((Kind.CRITIQUE, rnd)) or await self._critique(rec, response, principle, rnd, next(seq))
            verdict = crit.verdict
            if loop.stop_when_clean and verdict is not None and not verdict["violates"]:
                break
            if (Kind.REVISE, rnd) in done:
                response = done[(Kind.REVISE, rnd)].data["response"]
            else:
                feedback = self.scorer.feedback(score) if self.scorer is not None and score is not None else ""
                override = bool((verdict or {}).get("rule_override"))
                req = revise_request(rec.messages, response, crit.data["critique"], principle, cfg, feedback,
                                     examples=loop.fewshot, authority=self.authority, override=override)
                comp = await _staged("revise", self.engine.call("reviser", req, rec.id, ("revise", rnd)))
                revised = clean_revision(comp.text, response)
                data = {"principle": principle.id, "before": response, "response": revised or response,
                        "empty": not revised, "feedback": feedback, "finish_reason": comp.finish_reason}
                self._add(rec, Step(next(seq), Kind.REVISE, rnd, data))
                response = data["response"]
            score = await self._grade(rec, response, rnd, done, seq)
            if "revisions" in loop.candidates_from:
                candidates.append({"source": "revision", "n": rnd, "response": response, "score": score})
        if self.labeler is not None and (Kind.LABEL, 0) not in done:
            await self._label(rec, candidates, done, seq)

    def _add(self, rec: InputRecord, step: Step) -> None:
        """Queue `step` of `rec` to the store."""
        self.store.add_step(rec.id, step.seq, step.kind, step.round, step.data)

    async def _label(self, rec: InputRecord, candidates: list[dict[str, Any]], done: Done,
                     seq: Iterator[int]) -> None:
        """Sample the other candidates (seeds seed+1, …: each a `candidate` step, graded with a scorer), then
        store the labeler's `label` step. A revision identical to an earlier candidate is not judged twice."""
        loop, cfg = self.s.loop, self.s.generation
        if "samples" in loop.candidates_from:
            for n in range(1, loop.candidates):
                if (Kind.CANDIDATE, n) in done:
                    step = done[(Kind.CANDIDATE, n)].data
                else:
                    sample_cfg = cfg.model_copy(update={"seed": (cfg.seed or 0) + n})
                    comp = await _staged("candidate", self.engine.call("generator", draft_request(
                        rec.messages, sample_cfg), rec.id, ("candidate", n)))
                    step = {"response": comp.text.strip(), "finish_reason": comp.finish_reason}
                    if self.scorer is not None:
                        step["score"] = await _staged("grade", self.scorer.score(
                            self.engine, rec.messages, step["response"], rec.extra))
                    self._add(rec, Step(next(seq), Kind.CANDIDATE, n, step))
                candidates.insert(n, {"source": "sample", "n": n, "response": step["response"],
                                      "score": step.get("score")})
        unique: dict[str, dict[str, Any]] = {}
        for c in candidates:
            score = c.pop("score", None)
            if isinstance(score, dict) and score.get("reward") is not None:
                c["reward"] = score["reward"]
            unique.setdefault(c["response"], c)
        data = await _staged("label", self.labeler.label(self.engine, rec.messages, list(unique.values()),
                                                                         cfg.seed))
        self._add(rec, Step(next(seq), Kind.LABEL, 0, data))

    async def _grade(self, rec: InputRecord, response: str, rnd: int, done: Done,
                     seq: Iterator[int]) -> dict[str, Any] | None:
        """With a scorer: its score of the current response, stored as a `grade` step."""
        if self.scorer is None:
            return None
        if (Kind.GRADE, rnd) in done:
            return done[(Kind.GRADE, rnd)].score
        score = await _staged("grade", self.scorer.score(self.engine, rec.messages, response, rec.extra))
        self._add(rec, Step(next(seq), Kind.GRADE, rnd, {"score": score}))
        return score

    async def _critique(self, rec: InputRecord, response: str, principle: Principle, rnd: int,
                        seq: int) -> Step:
        req = critique_request(rec.messages, response, principle, critic_config(self.s), examples=self.s.loop.fewshot,
                               authority=self.authority)
        comp = await _staged("critique", self.engine.call("critic", req, rec.id, ("critique", rnd)))
        raw, verdict, repaired = comp.text, parse_verdict(comp.text), False
        if verdict is None:
            comp = await _staged("critique", self.engine.call("critic", repair_request(req, raw), rec.id,
                                                               ("repair", rnd)))
            raw, verdict, repaired = comp.text, parse_verdict(comp.text), True
            self.engine.stats.unparsed += verdict is None
        data = {"principle": principle.id, "layer": principle.layer, "principle_kind": principle.kind,
                "response": response, "raw": raw, "repaired": repaired, "parsed": verdict is not None,
                "verdict": verdict.model_dump(exclude_none=True) if verdict else None,
                # Unparsed after one repair: the critic's raw text still guides the revision.
                "critique": verdict.critique if verdict else raw}
        step = Step(seq, Kind.CRITIQUE, rnd, data)
        self._add(rec, step)
        return step


async def _staged(stage: str, aw: Any) -> Any:
    """Await a call; a ProviderError is raised again as a copy naming `stage` (same cause and traceback)."""
    try:
        return await aw
    except ProviderError as e:
        raise e.with_stage(stage) from e.__cause__
