"""Weights and the reward: `reward = sum(w_i * p_yes_i) + sum(w_c * check_c)`.

Weights JSON, one linear model per response type (a feature not listed has weight 0):

    {"<response type>": {"<proposition id or check name>": weight, ...}, ...}

The shipped default (`cai/data/rbr_weights.json`, for `rbr-safety`) rewards what each type's ideal
rule asks for (e.g. Comply: fully_complies +2, inability_to_comply -2, judgement -1; Hard Refuse:
inability_to_comply +2, disallowed_content -3, verbosity -1) and penalises insults and threats
everywhere. `cai rbr fit` learns weights of the same shape from graded responses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from cai.constitution import Constitution
from cai.errors import InputError
from cai.limits import WEIGHTS_BYTES, check_json, decode, read_bytes

Weights = dict[str, dict[str, float]]


def _line_of_key(text: str, key: str) -> int | None:
    idx = text.find(json.dumps(key))
    return text.count("\n", 0, idx) + 1 if idx >= 0 else None


def parse_weights(text: str, path: str) -> Weights:
    """Weights from JSON text; InputError naming `path` and the line of the first bad entry."""
    check_json(text, path)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputError(f"invalid JSON: {getattr(e, 'msg', e)}", path=path, line=getattr(e, "lineno", None)) from None
    if not isinstance(data, dict):
        raise InputError("weights must be a JSON object {response type: {feature: weight}}", path=path, line=1)
    out: Weights = {}
    for rtype, feats in data.items():
        if not isinstance(feats, dict):
            raise InputError(f"weights for {rtype!r} must be an object {{feature: weight}}", path=path,
                             line=_line_of_key(text, rtype))
        out[rtype] = {}
        for name, w in feats.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise InputError(f"weight {rtype}.{name} must be a finite number, not {w!r}", path=path,
                                 line=_line_of_key(text, name))
            out[rtype][name] = float(w)
    return out


def check_weights(weights: Weights, const: Constitution, path: str, text: str = "") -> None:
    """Every response type and feature named in `weights` exists in the constitution."""
    features = {p.id for p in const.propositions} | {c.name for c in const.checks}
    for rtype, feats in weights.items():
        if rtype not in const.response_types:
            raise InputError(f"unknown response type {rtype!r} (constitution {const.name} has: "
                             f"{', '.join(const.response_types)})", path=path, line=_line_of_key(text, rtype))
        for name in feats:
            if name not in features:
                raise InputError(f"unknown feature {name!r} for {rtype!r}: not a proposition or check of "
                                 f"constitution {const.name}", path=path, line=_line_of_key(text, name))


def default_weights_text() -> str:
    return resources.files("cai").joinpath("data/rbr_weights.json").read_text(encoding="utf-8")


def load_weights(path: str | Path | None, const: Constitution | None = None) -> Weights:
    """Weights from `path` (the shipped default when None), checked against `const` if given."""
    if path is None:
        text, where = default_weights_text(), "cai/data/rbr_weights.json"
    else:
        p, where = Path(path), str(path)
        if not p.is_file():
            raise InputError("weights file not found", path=where)
        text = decode(read_bytes(p, WEIGHTS_BYTES, "weights file"), where)
    weights = parse_weights(text, where)
    if const is not None:
        check_weights(weights, const, where, text)
    return weights


def features_of(p_yes: Mapping[str, float], checks: Mapping[str, float]) -> dict[str, float]:
    """The feature vector of one response: proposition P(yes) and check scores by name."""
    return {**{k: float(v) for k, v in p_yes.items()}, **{k: float(v) for k, v in checks.items()}}


def reward(weights: Weights, response_type: str, p_yes: Mapping[str, float], checks: Mapping[str, float]) -> float:
    """sum(w * feature) with the response type's weights (0 for a type without weights)."""
    w = weights.get(response_type, {})
    feats = features_of(p_yes, checks)
    return float(sum(wt * feats.get(name, 0.0) for name, wt in w.items()))


def rewards(weights: Weights, response_types: list[str], p_yes: list[Mapping[str, float]],
            checks: list[Mapping[str, float]]) -> list[float]:
    """`reward` over a batch (trl style: one float per completion)."""
    return [reward(weights, t, p, c) for t, p, c in zip(response_types, p_yes, checks)]
