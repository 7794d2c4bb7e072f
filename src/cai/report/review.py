"""The report's "People's review" section as plain data: what the decisions did to the exports (the manifest's
`reviews` section, as of the last export) and how far people agree with the critic, the judge and each other
(`Run.review_stats()`, docs/review_stats.md). `cai.report.page` turns it into HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReviewView:
    """Sentences (`facts`) and tables (title, headers, rows) of the section; empty `facts` for a run nobody
    reviewed yet (`none` says so)."""

    facts: list[tuple[str, str]] = field(default_factory=list)  # (data-stat key, sentence)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    none: str = ""


def _share(part: dict[str, Any]) -> str:
    """`3 of 4 (75%, 95% CI 30%–95%)`, or `none yet`."""
    if not part.get("n"):
        return "none yet"
    low, high = part["ci95"]
    return f"{part['k']} of {part['n']} ({part['share']:.0%}, 95% CI {low:.0%}–{high:.0%})"


def _ci(part: dict[str, Any]) -> str:
    return "–" if not part.get("n") else f"{part['ci95'][0]:.0%}–{part['ci95'][1]:.0%}"


def review_view(section: dict[str, Any] | None, stats: dict[str, Any] | None) -> ReviewView:
    """The section from the manifest's `reviews` and the run's review statistics (None: no decision stored)."""
    view = ReviewView()
    if not stats or not stats["decisions"]["total"]:
        view.none = ("No person has reviewed this run yet. `cai review serve RUN` opens the review page; "
                     "`cai review import RUN FILE` reads decisions made elsewhere (docs/review.md).")
        return view
    d = stats["decisions"]
    view.facts.append(("decisions", f"{d['total']} decisions stored: {d['used']} used, {d['stale']} stale (about "
                                    f"text that has changed), {d['superseded']} replaced by a later one."))
    if section and section.get("mode") != "ignore":
        view.facts.append(("applied", f"The last export applied them ({section['mode']}, policy "
                                      f"{section['policy']}): {section['applied']} pairs decided, "
                                      f"{section['flipped']} flipped, {section['edited']} edited, "
                                      f"{section['dropped']} dropped; {section['overruled_gate']} rows written that "
                                      "the quality gate had kept out."))
    elif section:
        view.facts.append(("applied", "The last export ignored them (--reviews ignore)."))
    view.facts.append(("revision", "Revision pairs where people preferred the revision: "
                                   + _share(stats["revision"]["preferred_revision"]) + "."))
    view.facts.append(("judge", "AI-labeled pairs where the judge agreed with people: "
                                + _share(stats["judge"]["agreement"]) + "."))
    critic = stats["critic"]
    rows = [[p, _share(b["violates"]), _share(b["no_violation"])] for p, b in critic["by_principle"].items()]
    rows.append(["all principles", _share(critic["overall"]["violates"]), _share(critic["overall"]["no_violation"])])
    view.tables.append(("The critic: verdicts people agreed with",
                        ["principle", "\"violates\" verdicts", "\"no violation\" verdicts"], rows))
    bins = [[f"{b['confidence'][0]:.1f}–{b['confidence'][1]:.1f}", b["n"], b["share"], _ci(b)]
            for b in stats["judge"]["by_confidence"] if b["n"]]
    if bins:
        view.tables.append(("The judge: agreement with people by its confidence |P − 0.5|",
                            ["confidence", "decisions", "agreement", "95% CI"], bins))
    people = [[item, r["items"], ", ".join(r["reviewers"]), r["observed"], r["kappa"], r["alpha"]]
              for item, r in stats["reviewers"].items() if r["items"]]
    if people:
        view.tables.append(("Reviewers with each other (items two or more reviewed)",
                            ["item", "items", "reviewers", "observed agreement", "Cohen's kappa",
                             "Krippendorff's alpha"], people))
    return view
