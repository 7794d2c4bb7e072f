"""Agreement measures over plain counts and labels: the Wilson score interval, Cohen's kappa and Krippendorff's
alpha (nominal). Pure functions; docs/review_stats.md defines each one."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from cai.errors import InputError

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95 % interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval (95 % by default) for a proportion of k successes in n trials; None for n = 0."""
    if n == 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int) -> dict[str, Any]:
    """k of n as `{k, n, share, ci95}`: share and the Wilson interval are None for n = 0."""
    ci = wilson(k, n)
    return {"k": k, "n": n, "share": k / n if n else None, "ci95": list(ci) if ci else None}


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' nominal labels on the same units (a[i], b[i] label unit i): (p_o − p_e) /
    (1 − p_e), with p_e from each rater's own label shares. None when undefined (no units, or p_e = 1)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def krippendorff_alpha(units: Sequence[Mapping[str, Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal data: `units` holds one {rater: label} mapping per unit, a rater absent
    where they gave no label. Units with fewer than two labels are not pairable and drop out. None when
    undefined (fewer than two labels in pairable units, or a single label value: no variation to explain).
    Computed by the `krippendorff` package (the `review` extra)."""
    units = [u for u in units if len(u) >= 2]
    values = sorted({v for u in units for v in u.values()}, key=repr)
    if len(values) < 2:
        return None
    try:
        import krippendorff
    except ModuleNotFoundError as e:
        if e.name != "krippendorff":
            raise
        raise InputError("agreement between more than two reviewers needs the 'review' extra: "
                         "pip install 'cai[review]' (krippendorff is not installed)") from None
    import numpy as np

    raters = sorted({r for u in units for r in u})
    code = {v: i for i, v in enumerate(values)}
    data = np.full((len(raters), len(units)), np.nan)
    for j, u in enumerate(units):
        for i, r in enumerate(raters):
            if r in u:
                data[i, j] = code[u[r]]
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def observed_agreement(units: Sequence[Mapping[str, Hashable]]) -> float | None:
    """The share of pairs of raters on the same unit who gave the same label (every unit with two or more
    labels counts each of its pairs once); None when no unit has two labels."""
    agree = pairs = 0
    for u in units:
        labels = list(u.values())
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                pairs += 1
                agree += labels[i] == labels[j]
    return agree / pairs if pairs else None
