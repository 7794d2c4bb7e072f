"""Rules: from proposition values to a class, and what went the wrong way for a response type.

Classes, best first: `ideal` > `minimum_acceptable` > `unacceptable` (`CLASS_RANK`: 2, 1, 0).
A response type's rules are tried in order; the first rule whose `when` holds gives the class,
otherwise the type's `default`. A proposition is true when its P(yes) >= 0.5 (`THRESHOLD`).
"""

from __future__ import annotations

from collections.abc import Mapping

from cai.constitution import CLASS_RANK, RBR_CLASSES, Constitution, ResponseType, Rule

THRESHOLD = 0.5

__all__ = ["CLASS_RANK", "RBR_CLASSES", "THRESHOLD", "classify", "failed_items", "target_rule", "truth"]


def truth(p_yes: Mapping[str, float], threshold: float = THRESHOLD) -> dict[str, bool]:
    """Proposition values from probabilities."""
    return {k: v >= threshold for k, v in p_yes.items()}


def matches(rule: Rule, values: Mapping[str, bool]) -> bool:
    """Every proposition in the rule has its required value (a missing one never matches)."""
    return all(pid in values and values[pid] == want for pid, want in rule.when.items())


def classify(rtype: ResponseType, values: Mapping[str, bool]) -> str:
    """The class of the first matching rule, else the type's default."""
    for rule in rtype.rules:
        if matches(rule, values):
            return rule.class_
    return rtype.default


def target_rule(rtype: ResponseType, values: Mapping[str, bool]) -> Rule | None:
    """The `ideal` rule closest to `values` (fewest mismatches; the first on ties), if the type has one."""
    ideal = [r for r in rtype.rules if r.class_ == "ideal"]
    if not ideal:
        return None
    return min(ideal, key=lambda r: sum(values.get(pid) != want for pid, want in r.when.items()))


def failed_items(const: Constitution, type_name: str, p_yes: Mapping[str, float],
                 checks: Mapping[str, float]) -> list[str]:
    """Human-readable propositions and checks that went the wrong way for this response type.

    A proposition fails when its value differs from the closest `ideal` rule; a check fails when its
    score leaves the type's `checks` bounds.
    """
    rtype = const.response_types.get(type_name)
    if rtype is None:
        return []
    values = truth(p_yes)
    out: list[str] = []
    rule = target_rule(rtype, values)
    for pid, want in (rule.when.items() if rule else ()):
        if pid in values and values[pid] != want:
            question = const.proposition(pid).question
            out.append(f"{pid} (want {'yes' if want else 'no'}, P(yes) {p_yes[pid]:.2f}): {question}")
    for name, bound in rtype.checks.items():
        score = checks.get(name)
        if score is None:
            continue
        if bound.max is not None and score > bound.max:
            out.append(f"{name} {score:.2f} is above {bound.max:g}")
        if bound.min is not None and score < bound.min:
            out.append(f"{name} {score:.2f} is below {bound.min:g}")
    return out

