"""`cai report`: one self-contained HTML file per run, checked in a real headless browser (the system's chromium
driven by playwright) for runs made against the loopback stub server: no console error, no request at all
beyond the file itself, every plot drawn, filters, pagination, search, the record view with its word diff,
and model text that cannot inject markup. Browser tests skip (with the reason) only where no chromium exists."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cai
from cai.errors import InputError
from cai.read.explore import word_diff
from cai.report import plots, write_report
from cai.report.data import ReportData
from cai.report.page import duration, exports_rows, script_json
from helpers import cai as cai_cli
from reliability import cai_proc, cai_run, stub_args

TIMEOUT_MS = 300_000  # a hang guard for a loaded machine, not a speed bound
INJECT = "</script><script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
DRAWN = {"violation-by-principle", "severity-by-round", "length-change"}


def chromium_path() -> str | None:
    """The system chromium (playwright cannot download browsers here); CAI_CHROMIUM overrides."""
    for candidate in (os.environ.get("CAI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set CAI_CHROMIUM); "
                    "the report's browser tests need one")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=exe, args=["--disable-dev-shm-usage"], timeout=TIMEOUT_MS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


class Page:
    """A report opened in a fresh page, with everything that went wrong while it was open."""

    def __init__(self, browser, path: Path) -> None:
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']")

    def assert_clean(self) -> None:
        assert self.errors == [] and self.failed == [] and self.requests == [self.url], \
            (self.errors, self.failed, self.requests)
        assert self.page.evaluate("window.__pwned") is None

    def plots(self) -> dict[str, tuple[float, float]]:
        """Drawn plot → (width, height) of its svg as laid out."""
        out = {}
        for fig in self.page.locator("figure.plot").all():
            box = fig.locator("svg").bounding_box()
            out[fig.get_attribute("data-plot")] = (box["width"], box["height"]) if box else (0, 0)
        return out

    def omitted(self) -> set[str]:
        return {li.get_attribute("data-plot") for li in self.page.locator("li.omitted").all()}

    def expect_count(self, shown: int, total: int) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#f-count")).to_have_text(f"{shown} of {total} records", timeout=TIMEOUT_MS)

    def listed_ids(self) -> list[str]:
        return self.page.locator("#rec-list > li").evaluate_all("els => els.map(e => e.dataset.id)")


def make_input(path: Path, n: int, expected: bool = False) -> Path:
    rows = [{"id": f"r{i:03d}", "prompt": f"Question number {i} about topic-{i} please."} for i in range(n)]
    rows[1]["prompt"] = INJECT
    rows[2] = {"id": rows[2]["id"], "messages": [{"role": "developer", "content": "Answer in one line."},
                                                 {"role": "user", "content": "What is a <b>bold</b> claim?"}]}
    if expected:
        for i, r in enumerate(rows):
            r["expected"] = "refuse" if i % 2 else "comply"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stub_run(srv, tmp_path: Path, n: int, *extra: str, expected: bool = False) -> Path:
    """`cai run` against the stub, in a child process: playwright's sync API keeps an event loop running in
    this thread, where `cai run` cannot start its own."""
    out = tmp_path / "run"
    res = cai_run("run", make_input(tmp_path / "in.jsonl", n, expected), "--out", out, *stub_args(srv), *extra)
    assert res.returncode == 0, res.stderr
    return out


def test_report_in_a_browser_filters_pages_and_diffs(tmp_path, stub_server, browser):
    run = stub_run(stub_server, tmp_path, 60)
    res = cai_cli("report", run)
    assert res.exit_code == 0, res.stderr
    assert res.stderr.strip() == f"wrote {run / 'report.html'}" and res.stdout == ""
    view = Page(browser, run / "report.html")
    view.assert_clean()
    plots = view.plots()
    assert set(plots) == DRAWN and all(w > 50 and h > 50 for w, h in plots.values()), plots
    assert view.omitted() == {"rewards", "refusal", "ai-preference-labels"}
    page = view.page

    # 60 records, 50 a page: the list holds one page only.
    view.expect_count(60, 60)
    assert len(view.listed_ids()) == 50
    page.click("#p-next")
    assert view.listed_ids() == [f"r{i:03d}" for i in range(50, 60)]

    # Filter by principle, then by "violated": the page shows exactly the records the run's tables say.
    crit = cai.open_run(run).critiques()
    sampled_by = {p: sorted(set(g["id"])) for p, g in crit.groupby("principle")}
    violated_by = {p: sorted(set(g.loc[g["violates"].eq(True), "id"])) for p, g in crit.groupby("principle")}
    principle = next((p for p in sorted(sampled_by) if 0 < len(violated_by[p]) < len(sampled_by[p])), None)
    assert principle is not None, "the stub's verdicts should mix violations and clean ones"
    sampled, violated = sampled_by[principle], violated_by[principle]
    value = page.locator("#f-principle option", has_text=re.compile(f"^{re.escape(principle)} ")).get_attribute("value")
    page.select_option("#f-principle", value)
    view.expect_count(len(sampled), 60)
    assert view.listed_ids() == sampled
    page.check("#f-violated")
    view.expect_count(len(violated), 60)
    assert view.listed_ids() == violated
    page.select_option("#f-principle", "")
    any_violation = sorted(set(crit.loc[crit["violates"].eq(True), "id"]))
    view.expect_count(len(any_violation), 60)
    page.uncheck("#f-violated")

    # Text search; untrusted text is shown as text, never as markup.
    page.fill("#f-search", "TOPIC-42 ")
    view.expect_count(1, 60)
    assert view.listed_ids() == ["r042"]
    page.fill("#f-search", "window.__pwned")
    view.expect_count(1, 60)
    assert page.locator("#rec-list .excerpt").first.text_content() == INJECT
    assert page.locator("#rec-list img, #rec-list b").count() == 0

    # Open a revised record: each round's critique and a word diff whose columns give back both texts.
    page.fill("#f-search", "")
    rid = crit.loc[crit["before"] != crit["after"], "id"].iloc[0]
    page.fill("#f-search", str(rid))
    page.click(f"#rec-list > li[data-id='{rid}'] .rec-head")
    detail = page.locator(f"#rec-list > li[data-id='{rid}'] .detail")
    rounds = crit[crit["id"] == rid].sort_values("round")
    assert detail.locator(".round").count() == len(rounds)
    for k, (_, c) in enumerate(rounds.iterrows()):
        sec = detail.locator(".round").nth(k)
        assert c["principle"] in sec.locator(".label").first.text_content()
        assert sec.locator(".text").first.text_content() == c["critique"]
        if c["before"] != c["after"]:
            cols = sec.locator(".diff .text")
            assert cols.nth(0).text_content() == c["before"] and cols.nth(1).text_content() == c["after"]
            assert cols.nth(0).locator("del").count() + cols.nth(1).locator("ins").count() > 0
    view.assert_clean()

    # The developer turn of a messages prompt is shown, as text.
    page.fill("#f-search", "bold")
    page.click("#rec-list > li[data-id='r002'] .rec-head")
    assert "Answer in one line." in page.locator("#rec-list > li[data-id='r002'] .detail").text_content()
    assert page.locator("#rec-list b").count() == 0
    view.assert_clean()


def test_word_diff_in_the_page_gives_back_both_texts(tmp_path, stub_server, browser):
    run = stub_run(stub_server, tmp_path, 3)
    view = Page(browser, write_report(run))
    cases = [("a b c", "a x c"), ("", "new text"), ("old text", ""), ("same\n\ntext ", "same\n\ntext "),
             ("The cat sat on the mat.", "The dog sat on a mat, quietly."), ("  lead", "lead  "),
             ("x " * 2100, "y " * 2100)]  # past MAX_CELLS: the middle is shown replaced whole
    for a, b in cases:
        ops = view.page.evaluate("([a, b]) => window.caiReport.wordDiff(a, b)", [a, b])
        assert "".join(t for op, t in ops if op != "insert") == a
        assert "".join(t for op, t in ops if op != "delete") == b
        if len(a) > 1000:
            assert [op for op, _ in ops] == ["delete", "insert"]
            continue
        changed = {op: sorted(w for o, t in ops if o == op for w in t.split()) for op in ("delete", "insert")}
        want = {op: sorted(w for o, t in word_diff(a, b) if o == op for w in t.split()) for op in ("delete", "insert")}
        assert changed == want, (a, b)  # the same words as cai.read.explore.word_diff (spacing may split differently)
    view.assert_clean()


def test_rbr_run_gets_reward_plots(tmp_path, stub_server, browser):
    stub_server.logprobs_fn = lambda body: [[(" Yes", -0.1), (" No", -2.5)]]
    run = stub_run(stub_server, tmp_path, 6, "--rbr")
    view = Page(browser, write_report(run))
    view.assert_clean()
    plots = view.plots()
    assert set(plots) == DRAWN | {"rewards"} and all(w > 50 and h > 50 for w, h in plots.values()), plots
    assert view.omitted() == {"refusal", "ai-preference-labels"}
    caption = view.page.locator("figure[data-plot='rewards'] figcaption").text_content()
    pairs = cai.open_run(run).pairs()
    improved = int((pairs["reward_chosen"] > pairs["reward_rejected"]).sum())
    assert f"Reward improved in {improved} of {len(pairs)} exported pairs" in caption
    view.page.click("#rec-list > li:first-child .rec-head")
    assert "reward " in view.page.locator("#rec-list .detail").first.text_content()


def test_expected_fields_get_the_refusal_plot(tmp_path, stub_server, browser):
    run = stub_run(stub_server, tmp_path, 8, expected=True)
    assert cai.open_run(run).manifest["refusal_metrics"]["records"] == 8
    view = Page(browser, write_report(run, tmp_path / "elsewhere" / "r.html"))
    view.assert_clean()
    plots = view.plots()
    assert set(plots) == DRAWN | {"refusal"} and all(w > 50 and h > 50 for w, h in plots.values()), plots
    assert view.omitted() == {"rewards", "ai-preference-labels"}


def test_report_of_a_run_being_written(tmp_path, stub_server, browser):
    """A run held mid-way (its lock held, no manifest yet) still gets a report, marked as a snapshot."""
    inp = make_input(tmp_path / "in.jsonl", 12)
    out = tmp_path / "live"
    stub_server.hold_after(20)
    proc = cai_proc("run", inp, "--out", out, *stub_args(stub_server), "--concurrency", "2", "--timeout", "600")
    try:
        stub_server.wait_for_requests(21, until=lambda: proc.poll() is not None)
        assert proc.poll() is None, "the run ended before the report"
        view = Page(browser, write_report(out))
        view.assert_clean()
        assert "running (pid" in view.page.locator("#overview").text_content()
    finally:
        stub_server.resume()
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def test_an_unparsed_critique_says_unparsed_with_the_reply_folded(tmp_path, stub_server, browser):
    stub_server.add_fault("notjson", times=2, when=lambda path, body: "response_format" in body)  # and its repair
    run = stub_run(stub_server, tmp_path, 3, "--concurrency", "1")
    crit = cai.open_run(run).critiques()
    bad = crit[crit["violates"].isna()]
    assert len(bad) == 1
    rid, raw = str(bad["id"].iloc[0]), str(bad["critique"].iloc[0])
    view = Page(browser, write_report(run))
    view.page.click(f"#rec-list > li[data-id='{rid}'] .rec-head")
    sec = view.page.locator(f"#rec-list > li[data-id='{rid}'] .round.unparsed")
    assert sec.count() == 1
    assert sec.locator(":scope > .text").first.text_content() == "unparsed"
    folded = sec.locator("details.raw")
    assert folded.get_attribute("open") is None and folded.locator(".text").text_content() == raw
    assert not folded.locator(".text").is_visible()
    folded.locator("summary").click()
    assert folded.locator(".text").is_visible()
    view.assert_clean()


def test_overview_exports_table_and_durations(tmp_path, stub_server):
    run = stub_run(stub_server, tmp_path, 4)
    page = write_report(run).read_text(encoding="utf-8")
    overview = page[page.index('id="overview"'):page.index("Every number in manifest.json")]
    assert "pairs_dropped_empty" not in overview and "with_expected" not in overview
    table = re.search(r'<table class="exports">(.*?)</table>', overview, re.S).group(1)
    ex = cai.open_run(run).manifest["exports"]
    assert f"<td>sft</td><td class=num>{ex['sft']}</td>" in table
    assert f"<td>critiques</td><td class=num>{ex['critiques']}</td>" in table
    assert f"<td>pairs dropped</td><td class=num>{ex['pairs_dropped']}</td>" in table
    assert duration(42.0) == "42.0 s" and duration(125) == "2 min 05 s" and duration(3 * 3600 + 7 * 60) == \
        "3 h 07 min" and duration(90000) == "1 d 1 h" and duration(None) == "–"
    rows = exports_rows({"sft": 5, "pairs": 3, "pairs_dropped": 2, "pairs_dropped_empty": 0,
                         "pairs_dropped_unchanged": 2, "pairs_ai_label": 1, "label_near_ties": 1, "rbr_graded": 4,
                         "rbr_improved": 3, "new_count": 7})
    assert rows == [["sft", 5, ""], ["pairs", 3, "1 of them AI-labeled (1 near-ties left out)"],
                    ["pairs dropped", 2, "unchanged 2"], ["graded by rbr", 4, "reward improved in 3"],
                    ["new count", 7, ""]]


def test_the_reward_plot_draws_only_the_panels_with_data():
    data = ReportData(name="x", manifest={}, status={}, overview={}, records=[], principles=[],
                      rewards=[("Comply", 0.1, 0.4), ("Hard Refuse", -0.2, 0.3)])
    alone = plots.rewards(data)
    assert alone.svg is not None and "pairs: final vs draft reward" not in alone.svg
    assert alone.caption == "No exported pair carries rewards; 2 graded records."
    data.pair_reward_changes = [0.3, 0.0]
    both = plots.rewards(data)
    assert "pairs: final vs draft reward" in both.svg and both.caption.startswith("Reward improved in 1 of 2")
    width = [float(re.search(r'<svg[^>]*width="([\d.]+)pt"', p.svg).group(1)) for p in (alone, both)]
    assert width[0] < width[1]


def test_the_length_scatter_is_as_tall_as_the_severity_plot_beside_it():
    data = ReportData(name="x", manifest={}, status={}, overview={}, records=[], principles=[],
                      lengths=[(120, 180)], severities=[(1, 2), (1, None)])
    heights = [float(re.search(r'<svg[^>]*height="([\d.]+)pt"', p.svg).group(1))
               for p in (plots.length_change(data), plots.severity_by_round(data))]
    assert heights[0] == heights[1]


def test_cli_errors_are_one_line(tmp_path, stub_server):
    res = cai_cli("report", tmp_path)
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "not a cai run" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    run = stub_run(stub_server, tmp_path, 3)
    (tmp_path / "file").write_text("")
    res = cai_cli("report", run, "-o", tmp_path / "file" / "report.html")
    assert res.exit_code == 2 and "cannot write report" in res.stderr and "file/report.html" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(InputError):
        write_report(tmp_path / "nothing-here")
    assert not list(run.glob(".*.tmp"))


def test_page_is_self_contained_and_data_is_inert(tmp_path, stub_server):
    run = stub_run(stub_server, tmp_path, 4)
    page = write_report(run).read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="cai-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in blob and ">" not in blob and json.loads(blob)["records"][1]["p"] == INJECT
    # nothing to fetch: no external element, no src, links and url() only to fragments of the page itself
    assert not re.search(r"<(link|img|iframe|object|embed|audio|video|source)\b|\b(src|srcset)=|@import"
                         r"|href=\"(?!#)|url\((?!#)", page.replace(blob, ""), re.I)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert page.count("<script") == 2 and html.unescape(csp).startswith("default-src 'none'; script-src 'sha256-")
    tricky = {"t": "</script><!-- & \u2028 \ud800 >"}
    text = script_json(tricky)
    assert not re.search(r"[<>&\u2028\ud800]", text) and json.loads(text)["t"] == tricky["t"]


def test_import_cai_does_not_load_matplotlib():
    code = "import sys, cai, cai.cli.commands, cai.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
