"""The report page: one HTML file with its styles, script, plots and data inlined.

Model text is untrusted. The overview is escaped here (`html.escape`); every record is in one JSON blob in a
`<script type="application/json">` element, with `<`, `>` and `&` written as `\\u003c`, `\\u003e`, `\\u0026`
(so `</script>` cannot appear in it), and the page's script puts text into the page with `textContent` only.
A Content-Security-Policy allows no network at all and runs only the page's own script (by its sha256).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cai import __version__
from cai.read.cmdline import budget_text
from cai.read.quality import PARTS
from cai.report.data import ReportData
from cai.report.plots import Plot
from cai.report.quality import PART_NAMES, QualityStats
from cai.report.review import ReviewView

_ASSETS = resources.files("cai.report").joinpath("assets")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SLOT = re.compile(r"\{\{(\w+)\}\}")


def asset(name: str) -> str:
    """A file of the page's template (`report.html`, `report.css`, `report.js`)."""
    return _ASSETS.joinpath(name).read_text(encoding="utf-8")


def script_json(data: Any) -> str:
    """`data` as JSON safe to put between `<script type="application/json">` tags: no `<`, `>` or `&` (so no
    `</script>` and no `<!--`), no lone surrogate (each becomes its JSON escape, which JSON.parse reads)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers for people: thousands separators, `digits` decimals for floats, `–` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An escaped HTML table; numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f"<td class=num>{esc(fmt(c))}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def duration(seconds: float | None) -> str:
    """A duration for people: seconds under a minute, then minutes and seconds, hours and minutes, days and
    hours (`–` for missing)."""
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = round(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s"


def model_name(spec: str, file: dict[str, Any] | None) -> str:
    """A role's model as the run named it, with the file and sha256 of a model loaded from a file."""
    if not file:
        return spec
    name = str(file.get("file", "?"))
    text = f"{spec if spec.endswith(name) else f'{spec}: {name}'} (sha256 {str(file.get('sha256', '?'))[:12]}…)"
    if req := file.get("requantized"):
        text += f", requantized to {req.get('type', '?')} (sha256 {str(req.get('sha256', '?'))[:12]}…)"
    return text


def exports_rows(counts: dict[str, Any]) -> list[list[Any]]:
    """The manifest's export counts as (export, rows, detail) rows: the files first, then the dropped pairs with
    their reasons, then any other count."""
    rest = dict(counts)
    reasons = {k.removeprefix("pairs_dropped_"): rest.pop(k) for k in list(rest) if k.startswith("pairs_dropped_")}
    dropped = rest.pop("pairs_dropped", None)
    ai, near = rest.pop("pairs_ai_label", None), rest.pop("label_near_ties", None)
    graded, improved = rest.pop("rbr_graded", None), rest.pop("rbr_improved", None)
    rows: list[list[Any]] = []
    for name in ("sft", "pairs", "critiques", "labels"):
        if name in rest:
            detail = ""
            if name == "pairs" and ai is not None:
                detail = f"{ai:,} of them AI-labeled ({near or 0:,} near-ties left out)"
            rows.append([name, rest.pop(name), detail])
    if dropped is not None:
        rows.append(["pairs dropped", dropped, ", ".join(f"{k} {v:,}" for k, v in reasons.items() if v)])
    if graded is not None:
        rows.append(["graded by rbr", graded, f"reward improved in {improved or 0:,}"])
    if "with_expected" in rest:
        rows.append(["with expected", rest.pop("with_expected"), "records whose input row has `expected`"])
    rows += [[k.replace("_", " "), v, ""] for k, v in rest.items()]
    return rows


def _usd(x: float | None) -> str:
    return "unknown (a model has no price)" if x is None else f"${x:,.4f}"


def overview_html(data: ReportData) -> str:
    """The overview section: run facts, models with tokens and cost per role, call cache, tables per
    principle and per round, and the manifest's numbers."""
    o = data.overview
    r = o["records"]
    state = f"running (pid {o['running_pid']}): this report is a snapshot" if o["running_pid"] else "not running"
    const = o["constitution"]
    ex = o["exports"]
    facts = [
        ["state", state],
        ["records", f"{r['input']:,} input: {r['done']:,} done, {r['failed']:,} failed, "
                    f"{r['in_progress']:,} in progress, {r['not_started']:,} not started"],
        ["constitution", f"{const.get('name', '?')} (sha256 {const.get('sha256', '?')})"
                         + ("; layers, platform first: " + ", ".join(f"{x['name']} ({x['sha256'][:12]})"
                                                                     for x in const["layers"])
                            if len(const.get("layers") or []) > 1 else "")],
        ["wall time", f"{duration(o['wall_seconds'])} over {fmt(o['invocations'])} invocation(s)"
                      f" ({o['started'] or '?'} → {o['ended'] or '?'})"],
        ["estimated cost", _usd(o["estimated_cost_usd"])],
        *([["budget", budget_text(o["budget"])]] if o.get("budget") else []),
        *([] if ex else [["exports", "none yet"]]),
        ["unparsed verdicts", fmt(o["unparsed_verdicts"])],
        ["open errors", fmt(o["errors_open"])],
    ]
    if o["call_cache"]:
        cc = o["call_cache"]
        tok = ", ".join(f"{role} {t['calls']:,} calls ({t['tokens_in']:,} in, {t['tokens_out']:,} out)"
                        for role, t in (cc.get("tokens") or {}).items())
        facts.append(["shared call cache", f"{cc['hits']:,} hits from {cc.get('path')}: {tok}"])
    models = []
    for role in sorted(set(o["models"]) | set(o["tokens"])):
        t = o["tokens"].get(role) or {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": None}
        cost = "–" if t["cost_usd"] is None else _usd(t["cost_usd"])
        models.append([role, model_name(o["models"].get(role, "?"), o["model_files"].get(role)),
                       o["base_urls"].get(role) or "", t["calls"], t["tokens_in"], t["tokens_out"], cost])
    parts = [f'<dl class="facts">{"".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)}</dl>']
    if ex:
        parts += ["<h3>Exports</h3>", table(["export", "rows", "detail"], exports_rows(ex), "exports")]
    parts += ["<h3>Models, tokens and cost per role</h3>",
              table(["role", "model", "base URL", "calls", "tokens in", "tokens out", "est. cost"], models)]
    parts += _stats_tables(data)
    return "\n".join(parts)


def _stats_tables(data: ReportData) -> list[str]:
    parts = []
    ps = data.principle_stats
    if ps is not None and len(ps):
        cols = ["principle", "kind", "tags", "sampled", "violations", "violation_rate", "mean_severity", "unparsed",
                "mean_length_change", "mean_reward_change"]
        if ps["mean_reward_change"].isna().all():
            cols.remove("mean_reward_change")
        if ps["kind"].isna().all():
            cols.remove("kind")
        parts += ["<h3>Per principle</h3>", table([c.replace("_", " ") for c in cols],
                                                  [[row[c] for c in cols] for row in ps.to_dict("records")])]
    rd = data.rounds
    if rd is not None and len(rd):
        cols = ["round", "critiques", "violations", "violation_rate", "mean_severity", "unparsed"]
        parts += ["<h3>Per round</h3>", table([c.replace("_", " ") for c in cols],
                                              [[row[c] for c in cols] for row in rd.to_dict("records")])]
    sm = data.summary
    if sm is not None and len(sm):
        parts.append("<details><summary>Every number in manifest.json</summary>"
                     + table(["metric", "value"], [[m, v] for m, v in zip(sm["metric"], sm["value"])]) + "</details>")
    return parts


def _share(n: int, of: int) -> str:
    return f"{n:,} of {of:,} ({n / of:.1%})" if of else f"{n:,} of 0"


def labels_html(data: ReportData, plot: Plot | None) -> str:
    """The "AI preference labels" section (only for a run with comparisons, else ""): how many, how confident,
    position bias, methods, per comparison principle, and the confidence histogram."""
    lab = data.labels
    if lab is None:
        return ""
    facts = [
        ["comparisons", f"{lab.comparisons:,} over {lab.records:,} records, each asked in both orders "
                        f"({lab.asks:,} single-order asks)", "comparisons"],
        ["judge", ", ".join(lab.judges) or "?", "judge"],
        ["label confidence", f"mean |P − 0.5| = {lab.mean_confidence:.3f} (0 = undecided, 0.5 = certain)",
         "mean-confidence"],
        ["position bias", f"the first-shown response won {_share(lab.first_wins, lab.asks)} single-order asks, "
                          f"the second-shown {lab.second_wins:,}, undecided {lab.ties:,} (no bias: 50%)",
         "first-shown-wins"],
        ["order disagreement", f"{_share(lab.disagreements, lab.comparisons)} comparisons, whose two orders disagree: "
                               "both picked the first-shown response, or both the second-shown",
         "order-disagreement"],
        ["methods", ", ".join(f"{m} {n:,}" for m, n in lab.methods.items()), "methods"],
        ["AI-labeled pairs", f"{lab.pairs:,} kept, {lab.near_ties:,} near-ties dropped (ranked by {lab.rank_by}, "
                             f"margin > {lab.min_margin:g})", "pairs"],
    ]
    rows = [[name, n, f"{conf:.3f}", f"{first:.1%}"] for name, (n, conf, first) in lab.principles.items()]
    parts = ['<section id="labels">\n<h2>AI preference labels</h2>',
             '<dl class="facts">' + "".join(f'<dt>{esc(k)}</dt><dd data-stat="{esc(key)}">{esc(v)}</dd>'
                                            for k, v, key in facts) + "</dl>",
             "<h3>Per comparison principle</h3>",
             table(["principle", "comparisons", "mean confidence", "first-shown win share"], rows, "label-principles")]
    if plot is not None and plot.svg is not None:
        parts.append(plots_html([plot]))
    parts.append("</section>")
    return "\n".join(parts)


def quality_html(stats: QualityStats | None) -> str:
    """The section (empty for a run with no done record): the gate, a table of flags, an example per flag."""
    if stats is None or not stats.tally.seen:
        return ""
    summary = stats.tally.summary()
    kept = "; ".join(f"{summary[p]['kept']:,} of {summary[p]['rows']:,} {PART_NAMES[p]} kept"
                     for p in PARTS if p in summary)
    parts = ['<section id="quality">\n<h2>Quality</h2>',
             f'<p data-stat="gate">Quality gate <b>{esc(summary["gate"])}</b> (keeps out: '
             f'{esc(", ".join(summary["keeps_out"]) or "nothing")}; a pair with an empty or unchanged side is '
             f'always kept out): {esc(kept)}. Each cell: rows flagged / rows kept out under that flag first. '
             'See docs/export.md for what each flag means.</p>']
    rows = stats.table()
    if rows:
        parts.append(table(["flag", *stats.parts], rows, "quality-flags"))
        parts.append("<h3>One example each</h3>")
        for flag in (r[0] for r in rows):
            ex = stats.examples.get(flag)
            if ex is not None:
                parts.append(f'<details class="quality-example" data-flag="{esc(flag)}"><summary>{esc(flag)}: '
                             f'{esc(ex.id)} ({esc(PART_NAMES[ex.part])})</summary><pre>{esc(ex.text)}</pre></details>')
    else:
        parts.append('<p class="note">No row was flagged.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def review_html(view: ReviewView | None) -> str:
    """The "People's review" section: what people decided and how far they agree with the models."""
    if view is None:
        return ""
    parts = ['<section id="review">\n<h2>People\'s review</h2>']
    if view.none:
        parts.append(f'<p class="note" data-stat="review-none">{esc(view.none)}</p>')
    parts += [f'<p data-stat="review-{esc(key)}">{esc(text)}</p>' for key, text in view.facts]
    for title, headers, rows in view.tables:
        parts += [f"<h3>{esc(title)}</h3>", table(headers, rows, "review-table")]
    if view.facts:
        parts.append('<p class="note">What each figure means: docs/review_stats.md.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def plots_html(plots: list[Plot]) -> str:
    """Drawn plots as figures; omitted ones as one-line notes."""
    out = []
    for p in plots:
        if p.svg is not None:
            out.append(f'<figure class="plot" data-plot="{esc(p.key)}"><figcaption><b>{esc(p.title)}</b> '
                       f'{esc(p.caption)}</figcaption>{p.svg}</figure>')
    notes = [f'<li class="omitted" data-plot="{esc(p.key)}">{esc(p.note)}</li>' for p in plots if p.svg is None]
    if notes:
        out.append(f'<ul class="notes">{"".join(notes)}</ul>')
    return "\n".join(out)


def render(data: ReportData, plots: list[Plot]) -> str:
    """The whole page."""
    script = asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "base-uri 'none'; form-action 'none'")
    blob = {"principles": data.principles, "records": data.records}
    # the label plot, when drawn, sits in the labels section; its omission note stays with the other plots
    label_plot = next((p for p in plots if p.key == "ai-preference-labels" and p.svg is not None), None)
    labels = labels_html(data, label_plot)
    quality = quality_html(data.quality)
    slots = {
        "csp": esc(csp), "title": esc(f"cai report: {data.name}"), "css": asset("report.css"),
        "generated": esc(f"made {datetime.now(UTC).isoformat(timespec='seconds')} by cai {__version__}"),
        "overview": overview_html(data), "plots": plots_html([p for p in plots if p is not label_plot]),
        "labels": labels, "nav_labels": ' · <a href="#labels">AI preference labels</a>' if labels else "",
        "quality": quality, "nav_quality": ' · <a href="#quality">Quality</a>' if quality else "",
        "review": review_html(data.review),
        "data": script_json(blob), "script": script,
    }
    return _SLOT.sub(lambda m: slots[m.group(1)], asset("report.html"))  # one pass: no slot inside a slot's value
