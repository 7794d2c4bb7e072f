"""The report's plots as inline SVG (matplotlib), each one omitted with a one-line note when its data is absent.

matplotlib is imported here, inside the functions, so `import cai` stays light. Figures are built with the
object API (`matplotlib.figure.Figure` on an explicit Agg canvas): pyplot and its global backend are never
touched, so making a report inside a notebook does not change the notebook's backend.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cai.report.data import ReportData

COLORS = {"draft": "#9aa5b1", "final": "#2b7bb9", "violates": "#d9534f", "ok": "#5cb85c"}
SEVERITY_COLORS = ["#5cb85c", "#f0c419", "#f0883e", "#d9534f"]
UNPARSED_COLOR = "#bbbbbb"
ROW_HEIGHT = 3.2  # inches: the plots that share a row of the page are this tall


@dataclass
class Plot:
    """One plot: `svg` (inline markup) when drawn, else `note` says in one line why it is omitted."""

    key: str
    title: str
    svg: str | None = None
    note: str | None = None
    caption: str = ""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, explicitly and for this figure only
    return fig


def to_svg(fig: Any, key: str) -> str:
    """The figure as an `<svg>` element: text kept as text, no date, ids salted by `key` so that several
    plots inlined in one page never share an id."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"cai-report-{key}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def violation_by_principle(data: ReportData) -> Plot:
    """Share of parsed verdicts that found a violation, per principle sampled."""
    plot = Plot("violation-by-principle", "Violation rate by principle")
    stats = data.principle_stats
    rows = [] if stats is None else [r for r in stats.to_dict("records")
                                      if r["sampled"] - r["unparsed"] > 0 and not math.isnan(r["violation_rate"])]
    if not rows:
        plot.note = "No violation-rate plot: the run has no parsed critic verdict yet."
        return plot
    rows.sort(key=lambda r: (r["violation_rate"], r["principle"]))
    fig = _figure(7.0, 0.9 + 0.3 * len(rows))
    ax = fig.add_subplot()
    names = [str(r["principle"]) for r in rows]
    rates = [r["violation_rate"] for r in rows]
    ax.barh(names, rates, color=COLORS["violates"])
    for i, r in enumerate(rows):
        ax.text(r["violation_rate"] + 0.01, i, f"{r['violations']}/{r['sampled'] - r['unparsed']}", va="center",
                fontsize=7)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("violation rate (violating / parsed verdicts)", fontsize=8)
    _style(ax)
    plot.svg = to_svg(fig, plot.key)
    plot.caption = "Labels: violations / parsed verdicts. Unparsed verdicts are left out of the rate."
    return plot


def severity_by_round(data: ReportData) -> Plot:
    """Verdicts per round stacked by severity (0 = no violation), unparsed ones in grey, with the mean."""
    plot = Plot("severity-by-round", "Severity by round")
    if not data.severities:
        plot.note = "No severity plot: the run has no critique yet."
        return plot
    counts: dict[int, Counter[int | None]] = defaultdict(Counter)
    for rnd, sev in data.severities:
        counts[rnd][sev] += 1
    rounds = sorted(counts)
    fig = _figure(5.5, ROW_HEIGHT)
    ax = fig.add_subplot()
    bottom = [0] * len(rounds)
    for sev, label, color in [*[(s, f"severity {s}", SEVERITY_COLORS[s]) for s in range(4)],
                              (None, "unparsed", UNPARSED_COLOR)]:
        heights = [counts[r][sev] for r in rounds]
        if any(heights):
            ax.bar(rounds, heights, bottom=bottom, color=color, label=label, width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights)]
    for x, r in enumerate(rounds):
        parsed = [s for s, n in counts[r].items() for _ in range(n) if s is not None]
        if parsed:
            ax.text(r, bottom[x], f"mean {statistics.fmean(parsed):.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(rounds, [f"round {r}" for r in rounds])
    ax.set_ylabel("critiques", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)
    plot.svg = to_svg(fig, plot.key)
    plot.caption = "Severity 0 means the critic found no violation; the label is the mean over parsed verdicts."
    return plot


def length_change(data: ReportData) -> Plot:
    """Draft length against final length per finished record, with the line of no change."""
    plot = Plot("length-change", "Response length before vs after revision")
    if not data.lengths:
        plot.note = "No length plot: no record has finished yet."
        return plot
    draft = [d for d, _ in data.lengths]
    final = [f for _, f in data.lengths]
    fig = _figure(4.2, ROW_HEIGHT)  # as tall as the severity plot beside it, the square axes centred
    ax = fig.add_subplot()
    ax.set_aspect("equal", adjustable="box")
    top = max(max(draft), max(final), 1) * 1.05
    ax.plot([0, top], [0, top], ls="--", lw=0.8, color="#888888", label="no change")
    ax.scatter(draft, final, s=20, alpha=0.7, color=COLORS["final"], edgecolors="none", label="record")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("draft length (characters)", fontsize=8)
    ax.set_ylabel("final length (characters)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    changes = [f - d for d, f in data.lengths]
    plot.svg = to_svg(fig, plot.key)
    plot.caption = (f"{len(changes)} records: median change {statistics.median(changes):+.0f} characters, "
                    f"{sum(c > 0 for c in changes)} longer, {sum(c < 0 for c in changes)} shorter, "
                    f"{sum(c == 0 for c in changes)} unchanged.")
    return plot


def rewards(data: ReportData) -> Plot:
    """Mean reward of drafts and finals per response type, and how many pairs' reward improved."""
    plot = Plot("rewards", "Reward of draft vs final")
    if not data.rewards:
        plot.note = "No reward plot: the run has no rule-based rewards (run with --rbr)."
        return plot
    by_type: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rtype, d, f in data.rewards:
        by_type[rtype].append((d, f))
    types = sorted(by_type)
    ch = data.pair_reward_changes
    # the pairs panel only when exported pairs carry rewards; the figure's width follows its panels
    width = 1.6 + 0.9 * len(types)
    fig = _figure(width + (2.6 if ch else 0.0), ROW_HEIGHT)
    ax, bx = fig.subplots(1, 2, width_ratios=[width, 2.6]) if ch else (fig.add_subplot(), None)
    xs = range(len(types))
    for off, which, i in ((-0.2, "draft", 0), (0.2, "final", 1)):
        ax.bar([x + off for x in xs], [statistics.fmean(v[i] for v in by_type[t]) for t in types], width=0.4,
               color=COLORS[which], label=which)
    ax.axhline(0, color="#888888", lw=0.6)
    ax.set_xticks(list(xs), [f"{t}\n(n={len(by_type[t])})" for t in types])
    ax.set_ylabel("mean reward", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    improved, same, worse = sum(c > 0 for c in ch), sum(c == 0 for c in ch), sum(c < 0 for c in ch)
    if bx is not None:
        bx.bar(["improved", "same", "worse"], [improved, same, worse],
               color=[COLORS["ok"], UNPARSED_COLOR, COLORS["violates"]])
        bx.set_title("pairs: final vs draft reward", fontsize=8)
        _style(bx)
    plot.svg = to_svg(fig, plot.key)
    plot.caption = (f"Reward improved in {improved} of {len(ch)} exported pairs ({improved / len(ch):.0%}); "
                    if ch else "No exported pair carries rewards; ") + f"{len(data.rewards)} graded records."
    return plot


def refusal(data: ReportData) -> Plot:
    """Not-Unsafe and Not-Overrefuse of drafts and finals (manifest `refusal_metrics`)."""
    plot = Plot("refusal", "Refusal behaviour: Not-Unsafe / Not-Overrefuse")
    m = data.overview.get("refusal_metrics")
    metrics = [("not_unsafe", "Not-Unsafe", "should_refuse"), ("not_overrefuse", "Not-Overrefuse", "should_comply")]
    if not m or all((m.get(w) or {}).get(k) is None for w in ("draft", "final") for k, _, _ in metrics):
        plot.note = "No refusal plot: no finished input row carries `expected` (comply or refuse)."
        return plot
    fig = _figure(5.0, ROW_HEIGHT)
    ax = fig.add_subplot()
    for off, which in ((-0.2, "draft"), (0.2, "final")):
        rates, label = m.get(which) or {}, which
        for x, (key, _, _) in enumerate(metrics):
            value = rates.get(key)
            if value is None:
                ax.text(x + off, 0.02, "n/a", ha="center", fontsize=7)
                continue
            ax.bar(x + off, value, width=0.4, color=COLORS[which], label=label)
            ax.text(x + off, value + 0.02, f"{value:.0%}", ha="center", fontsize=7)
            label = None  # one legend entry per side
    counts = m.get("final") or m.get("draft") or {}
    ax.set_xticks([0, 1], [f"{label}\n(n={counts.get(n, 0)})" for _, label, n in metrics])
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _style(ax)
    plot.svg = to_svg(fig, plot.key)
    plot.caption = f"{m.get('records', 0)} records with `expected`; refusal decided by {m.get('decided_by', '?')}."
    return plot


def ai_preference_labels(data: ReportData) -> Plot:
    """Label confidence: histogram of |P − 0.5| over the run's AI-label comparisons, with its mean. Drawn in
    the page's "AI preference labels" section (the omission note stays with the other plots)."""
    plot = Plot("ai-preference-labels", "AI label confidence")
    lab = data.labels
    if lab is None:
        plot.note = "No AI preference-label plot: the run has no AI preference labels (run with --candidates K)."
        return plot
    fig = _figure(5.5, ROW_HEIGHT)
    ax = fig.add_subplot()
    bins = [i / 20 for i in range(11)]  # 0, 0.05, ..., 0.5
    ax.hist(lab.confidences, bins=bins, color=COLORS["final"], edgecolor="white")
    ax.axvline(lab.mean_confidence, color=COLORS["violates"], ls="--", lw=1,
               label=f"mean {lab.mean_confidence:.3f}")
    ax.set_xlim(0, 0.5)
    ax.set_xlabel("|P(a ≻ b) − 0.5| (0 = undecided, 0.5 = certain)", fontsize=8)
    ax.set_ylabel("comparisons", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    plot.svg = to_svg(fig, plot.key)
    plot.caption = (f"{lab.comparisons} comparisons, P averaged over both orders; mean confidence "
                    f"{lab.mean_confidence:.3f}.")
    return plot


#: Every plot of the report, in page order.
PLOTS: list[Callable[[ReportData], Plot]] = [violation_by_principle, severity_by_round, length_change, rewards,
                                             refusal, ai_preference_labels]


def make_plots(data: ReportData) -> list[Plot]:
    """Every plot in PLOTS, drawn or with its omission note."""
    return [make(data) for make in PLOTS]
