"""The "ai" labeler: every pair of a prompt's candidates judged in both orders under a sampled comparison
principle, then ranked (`cai.labels.rank`) by the judge, the rule-based reward, or both.

Each ranking keeps every pair of candidates oriented winner-first with its margin P(winner ≻ loser) − 0.5 on
that ranking's own probability scale, so the exports can apply `--min-margin` and `--rank-by` without
judging again:

* judge: Bradley–Terry over the soft labels for K ≥ 3; for K = 2 the averaged label itself (win rate);
* rbr: P(i ≻ j) = sigmoid(reward_i − reward_j);
* judge+rbr: Bradley–Terry log-strength + reward, P(i ≻ j) = sigmoid of the difference (the RBR paper adds
  its reward to the preference model's).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Mapping
from typing import Any

from cai.calls import Request
from cai.constitution import Constitution, sample_comparison
from cai.core.engine import Engine
from cai.errors import InputError
from cai.labels.judge import judge_pair, pair_requests
from cai.labels.rank import Ranking, bradley_terry, oriented, rank
from cai.settings import LabelSettings, RunSettings

ROLE = "judge"


class AILabeler:
    """`cai.core.scoring.Labeler` for RunSettings with labeling on (or given LabelSettings directly)."""

    def __init__(self, labels: LabelSettings, judge: str, const: Constitution) -> None:
        if not const.comparisons:
            raise InputError("this constitution has no `comparisons:` section to judge candidates by; add one "
                             "or use --constitution default", path=const.path or None)
        self.s, self.judge, self.const = labels, judge, const

    @classmethod
    def for_run(cls, settings: RunSettings, const: Constitution) -> AILabeler:
        labels = settings.labels or LabelSettings()
        return cls(labels, labels.judge or settings.models.critic, const)

    def models(self) -> dict[str, str]:
        return {ROLE: self.judge}

    def fingerprint(self) -> dict[str, Any]:
        return {"labeler": "ai", "cot": self.s.cot, "votes": self.s.votes,
                "comparisons_sha256": self.const.comparisons_sha256}

    async def compare(self, engine: Engine, messages: list[dict[str, str]], first: str, second: str,
                      pair: tuple[int, int], seed: int | None) -> dict[str, Any]:
        """One comparison: the principle sampled for this prompt and pair, and `judge_pair`'s soft label."""
        principle = sample_comparison(self.const, seed, messages, pair)
        out = await judge_pair(engine, ROLE, messages, first, second, principle.question, votes=self.s.votes,
                               cot=self.s.cot)
        return {"a": pair[0], "b": pair[1], "principle": principle.id, **out}

    def requests(self, messages: list[dict[str, str]], candidates: list[str], seed: int | None,
                 logprobs: Mapping[str, bool]) -> list[tuple[str, Request]]:
        """(role, request) of each call `label` makes for these candidates when the judge's answers can be read
        (`logprobs`: whether each role's model gives logprobs); for `cai estimate`."""
        out: list[tuple[str, Request]] = []
        for i, j in itertools.combinations(range(len(candidates)), 2):
            principle = sample_comparison(self.const, seed, messages, (i, j))
            out += [(ROLE, r) for r in pair_requests(messages, candidates[i], candidates[j], principle.question,
                                                     votes=self.s.votes, cot=self.s.cot,
                                                     logprobs=logprobs.get(ROLE, False))]
        return out

    async def label(self, engine: Engine, messages: list[dict[str, str]], candidates: list[dict[str, Any]],
                    seed: int | None) -> dict[str, Any]:
        k = len(candidates)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        comparisons = list(await asyncio.gather(*(
            self.compare(engine, messages, candidates[i]["response"], candidates[j]["response"], (i, j), seed)
            for i, j in pairs)))
        soft = [(c["a"], c["b"], c["p"]) for c in comparisons]
        rankings = {"judge": oriented(rank(k, soft), "judge")}
        rewards = [c.get("reward") for c in candidates]
        if k and all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards):
            rankings["rbr"] = oriented(Ranking.logistic(rewards, "reward"), "rbr")
            bt = bradley_terry(k, soft)
            rankings["judge+rbr"] = oriented(Ranking.logistic(
                [float(s) + r for s, r in zip(bt, rewards, strict=True)], "bt+reward"), "judge+rbr")
        return {"judge": engine.models[ROLE].spec, "cot": self.s.cot, "candidates": candidates,
                "comparisons": comparisons, "rankings": rankings}
