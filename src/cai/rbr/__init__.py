"""Rule-based rewards (RBR): grade responses with yes/no propositions, rules and deterministic checks.

Pieces: `checks` (deterministic checks, re-exported from `cai.scoring.checks`), `rules` (propositions → class),
`grader` (P(yes) from logprobs, votes or one joint call), `reward` (weights, reward), `score`
(`score_response` and `feedback_text`), `scorer` (`RbrScorer`, the `cai.core.scoring.Scorer` the pipeline
calls), `fit` (hinge-ranking weight fitting), `evaluate` (grader vs human labels), `metrics`
(Not-Unsafe / Not-Overrefuse of a run, and `refusal_metrics_extra`, the manifest hook), `refusal_grader` (the
three-way refusal question asked of a grader), `refusal_eval` (refusal classification vs people's labels),
`cli` (`cai rbr`).
`scorer.rbr` (`cai.rbr.scorer:rbr_scorer`) and `manifest.refusal` are its `cai.plugins` entry points. See
docs/rbr.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"score_response": "cai.rbr.score", "feedback_text": "cai.rbr.score",
         "run_refusal_metrics": "cai.rbr.metrics", "refusal_rates": "cai.rbr.metrics",
         "refusal_metrics_extra": "cai.rbr.metrics", "load_weights": "cai.rbr.reward",
         "RbrScorer": "cai.rbr.scorer"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the hooks on first use, so `import cai.cli.rbr` stays light."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai.rbr' has no attribute {name!r}")
