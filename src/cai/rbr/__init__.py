"""Rule-based rewards (RBR): grade responses with yes/no propositions, rules and deterministic checks.

Pieces: `checks` (deterministic checks, a registry), `rules` (propositions → class), `grader`
(P(yes) from logprobs, votes or one joint call), `reward` (weights, reward), `score` (the pipeline
hooks `score_response` and `feedback_text`), `fit` (hinge-ranking weight fitting), `evaluate`
(grader vs human labels), `metrics` (Not-Unsafe / Not-Overrefuse of a run), `cli` (`cai rbr`).
See docs/rbr.md.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"score_response": "cai.rbr.score", "feedback_text": "cai.rbr.score",
         "run_refusal_metrics": "cai.rbr.metrics", "refusal_rates": "cai.rbr.metrics",
         "load_weights": "cai.rbr.reward"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the hooks on first use, so `import cai.rbr.cli` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai.rbr' has no attribute {name!r}")
