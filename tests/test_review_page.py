"""The review page (`cai review serve`, `cai.review`): its security rules and JSON over HTTP (starlette's
TestClient), its queue (seeded stratified sample, filters, resume, work split, blind overlap), and the page itself
in the system's chromium driven by playwright, served by `cai review serve` in a child process: review by keyboard,
reload, two reviewers with overlap, model text shown as text, and a `kill -9` that keeps every saved decision.
Runs are made against the loopback stub with a scripted judge, so that records have AI-labeled pairs."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import cai
from cai.errors import InputError
from cai.read.explore import word_diff
from cai.review.queue import build_queue, entries, stratified_sample
from cai.review.server import allowed_hosts, create_app
from cai.review.session import ReviewSession
from cai.store.reviews import ReviewStore
from helpers import cai as cai_cli
from reliability import cai_proc, cai_run, one_line_error, stub_args
from servers import StubServer
from test_labels_view import judge_logprobs
from test_report import INJECT, TIMEOUT_MS, browser  # noqa: F401 - the module-scoped browser fixture

TOKEN = "test-token-0123456789"
PORT = 8765  # the port the TestClient's requests name in their Host header
BASE = f"http://127.0.0.1:{PORT}"
AUTH = {"X-CAI-Token": TOKEN}
PROMPTS = [f"Question {i}: tell me about topic {i}." for i in range(8)]
PROMPTS[1] = "INJECT-ME " + INJECT


def reply(kind: str, body: dict) -> str | None:
    """Drafts and samples that differ by seed (so that candidates differ and get judged), and for the injected
    prompt a reply that carries markup too; every other request gets the stub's own reply."""
    msgs = body.get("messages") or []
    if len(msgs) != 1 or body.get("response_format"):
        return None
    seed = hashlib.sha256(repr(body.get("seed")).encode()).hexdigest()[:12]
    if "INJECT-ME" in str(msgs[0].get("content")):
        return f"Reply {seed}: {INJECT}"
    return f"Reply with seed {seed}: the answer is here."


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A finished run of PROMPTS with two critique rounds and two candidates per prompt (AI-labeled pairs)."""
    folder = tmp_path_factory.mktemp("review-page")
    inp = folder / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    with StubServer(reply_fn=reply, logprobs_fn=judge_logprobs) as srv:
        res = cai_run("run", inp, "--out", folder / "run", *stub_args(srv), "--candidates", "2",
                      "--quality-gate", "off")
    assert res.returncode == 0, res.stderr
    return folder / "run"


@pytest.fixture
def run(made, tmp_path) -> Path:
    """A fresh copy of the module's run (no decisions yet)."""
    return Path(shutil.copytree(made, tmp_path / "run"))


def client(run: Path, reviewer: str = "ann", **options) -> TestClient:
    session = ReviewSession(run, reviewer, **options)
    return TestClient(create_app(session, TOKEN, allowed_hosts("127.0.0.1", PORT)), base_url=BASE)


def stored(run: Path) -> list[tuple]:
    with ReviewStore(run, readonly=True) as store:
        return [(d.reviewer, d.item, d.id, d.round, d.pair, d.decision, d.edit, d.note) for d in store.decisions()]


# -- security ------------------------------------------------------------------------------------------------


def test_every_request_needs_the_token(run) -> None:
    c = client(run)
    for path in ("/", "/assets/review.js", "/assets/review.css", "/api/queue", "/api/record/0", "/nowhere"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, params={"token": "wrong"}).status_code == 403, path
        assert c.get(path, headers={"X-CAI-Token": "wrong"}).status_code == 403, path
        assert c.get(path, params={"token": TOKEN}).status_code == (404 if path == "/nowhere" else 200), path
    assert c.get("/api/queue", headers=AUTH).status_code == 200
    decision = {"id": "p0", "item": "critique", "round": 1, "decision": "agree"}
    assert c.post("/api/decision", json=decision).status_code == 401
    assert c.post("/api/decision", json=decision, headers={"X-CAI-Token": "wrong"}).status_code == 403
    assert stored(run) == []
    page = c.get("/", params={"token": TOKEN})
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"


def test_the_host_header_must_be_the_bound_address(run) -> None:
    c = client(run)
    for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1", f"127.0.0.1:{PORT + 1}", f"10.0.0.1:{PORT}"):
        res = c.get("/api/queue", headers={**AUTH, "host": host})
        assert res.status_code == 403 and "Host" in res.json()["error"], host
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"LOCALHOST:{PORT}"):
        assert c.get("/api/queue", headers={**AUTH, "host": host}).status_code == 200, host
    assert allowed_hosts("0.0.0.0", PORT) is None  # --allow-remote on every address: the token alone guards
    assert allowed_hosts("192.168.1.5", PORT) == {f"192.168.1.5:{PORT}"}


def test_a_cross_site_form_post_is_refused(run) -> None:
    c = client(run)
    form = {"id": "p0", "item": "critique", "round": "1", "decision": "agree"}
    res = c.post("/api/decision", params={"token": TOKEN}, data=form)
    assert res.status_code == 403 and "x-cai-token" in res.json()["error"]
    res = c.post("/api/decision", params={"token": TOKEN}, content=json.dumps(form),
                 headers={"content-type": "text/plain"})
    assert res.status_code == 403
    assert stored(run) == []


def test_the_page_writes_only_decisions_and_only_as_its_reviewer(run) -> None:
    before = (run / "run.sqlite").read_bytes()
    c = client(run, "ann")
    ok = c.post("/api/decision", headers=AUTH, json={"id": "p0", "item": "critique", "round": 1,
                                                     "decision": "disagree", "note": "fine as it is"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["mine"] == {**ok.json()["mine"], "decision": "disagree", "note": "fine as it is",
                                 "stale": False}
    bad = {"reviewer": ({"id": "p0", "item": "pair", "decision": "chosen", "reviewer": "mallory"}, "a decision is"),
           "decision": ({"id": "p0", "item": "pair", "decision": "agree"}, "decision 'agree' is not one for a pair"),
           "round": ({"id": "p0", "item": "critique", "round": 9, "decision": "agree"}, "no critique of round 9"),
           "record": ({"id": "nope", "item": "pair", "decision": "tie"}, "not in this reviewer's queue"),
           "edit": ({"id": "p0", "item": "pair", "decision": "tie", "edit": "x"}, "an edit corrects")}
    for name, (body, message) in bad.items():
        res = c.post("/api/decision", headers=AUTH, json=body)
        assert res.status_code == 400 and message in res.json()["error"], (name, res.text)
        assert "\n" not in res.json()["error"]
    assert c.post("/api/decision", headers=AUTH, content=b"{not json").status_code == 400
    assert stored(run) == [("ann", "critique", "p0", 1, "", "disagree", None, "fine as it is")]
    assert (run / "run.sqlite").read_bytes() == before


# -- the JSON of a record ------------------------------------------------------------------------------------


def test_a_record_as_json_is_the_runs_rows(run) -> None:
    view = cai.open_run(run)
    crit, pairs = view.critiques(), view.pairs()
    c = client(run)
    queue = c.get("/api/queue", headers=AUTH).json()
    assert queue["reviewer"] == "ann" and queue["start"] == 0 and queue["total"] == len(PROMPTS)
    seen_ai = 0
    for n in range(queue["total"]):
        rec = c.get(f"/api/record/{n}", headers=AUTH).json()
        rid = rec["id"]
        mine = crit[crit["id"] == rid].sort_values("round")
        assert [(x["round"], x["principle"], x["layer"], x["kind"], x["critique"], x["violates"], x["severity"])
                for x in rec["critiques"]] == list(zip(mine["round"], mine["principle"], mine["layer"], mine["kind"],
                                                       mine["critique"], mine["violates"], mine["severity"]))
        for x, (_, row) in zip(rec["critiques"], mine.iterrows()):
            if x["diff"] is not None:  # the word diff gives back the text before and the revision
                assert "".join(t for op, t in x["diff"] if op != "insert") == row["before"]
                assert "".join(t for op, t in x["diff"] if op != "delete") == row["after"]
        rp = pairs[(pairs["id"] == rid)]
        if rec["revision_pair"] is not None:
            assert (rec["revision_pair"]["chosen"], rec["revision_pair"]["rejected"]) == \
                (rp["chosen_text"].iloc[0], rp["rejected_text"].iloc[0])
            assert rec["revision_pair"]["diff"] == [list(op) for op in word_diff(rec["draft"], rec["final"])]
            assert rec["revision_pair"]["quality"]["kept"] is True
        labeled = pairs[pairs["id"].str.startswith(f"{rid}:")]
        assert [p["pair"] for p in rec["ai_pairs"]] == list(labeled["id"])
        for p, (_, row) in zip(rec["ai_pairs"], labeled.iterrows()):
            label = row["label"]
            assert p["margin"] == label["margin"] and p["judge"] == label["judge"]
            assert p["p"] == pytest.approx((label["p_chosen_first"] + label["p_chosen_second"]) / 2)
            seen_ai += 1
        assert [(t["item"], t["round"], t["pair"]) for t in rec["targets"]] == \
            [("critique", r, None) for r in mine["round"]] + \
            ([("pair", None, None)] if rec["revision_pair"] else []) + [("pair", None, p) for p in labeled["id"]]
        assert all(t["mine"] is None for t in rec["targets"])
    assert seen_ai > 0, "the scripted judge should have labeled some pairs"
    assert c.get(f"/api/record/{queue['total']}", headers=AUTH).status_code == 404


# -- the queue ------------------------------------------------------------------------------------------------


def test_a_sample_is_seeded_and_spread_over_principles(run) -> None:
    view = cai.open_run(run)
    pool, items = entries(view.record_rows())
    first = {e.id: e.stratum for e in pool}
    crit = view.critiques()
    assert first == {rid: g.sort_values("round")["principle"].iloc[0] for rid, g in crit.groupby("id")}
    a = [e.id for e in build_queue(pool, [], items, "ann", sample=5, seed=3)]
    assert a == [e.id for e in build_queue(pool, [], items, "ann", sample=5, seed=3)] and len(set(a)) == 5
    assert {tuple(e.id for e in build_queue(pool, [], items, "ann", sample=5, seed=s)) for s in range(6)} != {tuple(a)}
    # every stratum gives one before any gives two
    sample = stratified_sample(pool, len(pool), seed=1)
    strata = sorted({e.stratum for e in pool})
    assert sorted(e.stratum for e in sample[:len(strata)]) == strata
    assert sorted(e.id for e in sample) == sorted(first)


def test_only_filters(run) -> None:
    view = cai.open_run(run)
    pool, items = entries(view.record_rows())
    crit, pairs = view.critiques(), view.pairs()
    violated = sorted(set(crit.loc[crit["violates"].eq(True), "id"]))
    assert sorted(e.id for e in build_queue(pool, [], items, "ann", only=["violated"])) == violated
    principle = crit["principle"].iloc[0]
    assert sorted(e.id for e in build_queue(pool, [], items, "ann", only=[f"principle={principle}"])) == \
        sorted(set(crit.loc[crit["principle"] == principle, "id"]))
    labeled = sorted({p.split(":")[0] for p in pairs["id"] if ":" in p})
    assert sorted(e.id for e in build_queue(pool, [], items, "ann", only=["ai_label"])) == labeled
    both = build_queue(pool, [], items, "ann", only=["ai_label", "violated"])
    assert sorted(e.id for e in both) == sorted(set(labeled) & set(violated))
    for bad in ("principle=", "violated=yes", "nonsense"):
        with pytest.raises(InputError, match="expected principle=ID, violated or ai_label"):
            build_queue(pool, [], items, "ann", only=[bad])


def test_resume_work_split_overlap_and_blindness(run) -> None:
    view = cai.open_run(run)
    ann = client(run, "ann")
    first = ann.get("/api/record/0", headers=AUTH).json()
    for t in first["targets"]:
        body = {"id": first["id"], "item": t["item"], "decision": "agree" if t["item"] == "critique" else "tie",
                "note": "ann's secret note"}
        body.update({"round": t["round"]} if t["round"] else {}, **({"pair": t["pair"]} if t["pair"] else {}))
        assert ann.post("/api/decision", headers=AUTH, json=body).status_code == 200
    view.review("p3", "agree", reviewer="ann", round=1)  # p3 begun, not finished
    # ann resumes at her first unfinished record; progress counts records finished
    again = client(run, "ann").get("/api/queue", headers=AUTH).json()
    assert again["start"] == 1 and again["progress"]["done"] == 1
    # bob's queue leaves out what ann reviewed; with --overlap 1 one of them comes back, blind
    bob = client(run, "bob").get("/api/queue", headers=AUTH).json()
    assert bob["total"] == len(PROMPTS) - 2
    ids = [e.id for e in ReviewSession(run, "bob", overlap=1).queue]
    assert len(ids) == len(PROMPTS) - 1 and len({"p0", "p3"} & set(ids)) == 1
    assert ids == [e.id for e in ReviewSession(run, "bob", overlap=1).queue]  # seeded
    c = client(run, "bob", overlap=2)
    for n in range(c.get("/api/queue", headers=AUTH).json()["total"]):
        res = c.get(f"/api/record/{n}", headers=AUTH)
        assert "ann" not in res.text and "secret" not in res.text
        assert all(t["mine"] is None for t in res.json()["targets"])
    # a decision about text that has changed is shown stale, and the record counts as not finished
    with ReviewStore(run) as store:
        d = next(x for x in store.decisions() if x.reviewer == "ann" and x.item == "critique" and x.id == "p0")
        store.save([type(d)(**{**d.__dict__, "sha256": "0" * 64})])
    c = client(run, "ann")
    rec = c.get("/api/record/0", headers=AUTH).json()
    assert rec["targets"][0]["mine"]["stale"] is True and rec["progress"]["done"] == 0


def test_reviewing_while_a_cai_run_holds_the_run(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"q{i}?"}) + "\n" for i in range(4)))
    run = tmp_path / "live"
    with StubServer() as srv:
        srv.hold_after(7)  # q0 done (5 calls), q1 mid-way: the writer is live and holds the lock
        proc = cai_proc("run", inp, "--out", run, *stub_args(srv), "--concurrency", "1", "--timeout", "600")
        try:
            srv.wait_for_requests(8, until=lambda: proc.poll() is not None)
            c = None
            while c is None or c.get("/api/queue", headers=AUTH).json()["total"] == 0:  # until q0's commit lands
                assert proc.poll() is None
                c = client(run)
            assert cai.open_run(run).status()["running_pid"] == proc.pid
            res = c.post("/api/decision", headers=AUTH, json={"id": "q0", "item": "pair", "decision": "rejected"})
            assert res.status_code == 200, res.text
            assert proc.poll() is None, "the run ended before the decision was saved"
        finally:
            srv.resume()
            _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert stored(run) == [("ann", "pair", "q0", 0, "", "rejected", None, None)]


# -- the command line -----------------------------------------------------------------------------------------


def test_serve_refuses_a_remote_host_without_the_flag_and_a_bad_option(run) -> None:
    res = cai_cli("review", "serve", run, "--host", "0.0.0.0", "--no-browser")
    assert res.exit_code == 2 and "--allow-remote" in one_line_error(res.stderr) and res.stdout == ""
    res = cai_cli("review", "serve", run, "--only", "principle", "--no-browser")
    assert res.exit_code == 2 and "expected principle=ID" in one_line_error(res.stderr)
    res = cai_cli("review", "serve", run.parent / "nothing", "--no-browser")
    assert res.exit_code == 2 and res.stdout == ""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cai_cli("review", "serve", run, "--port", port, "--no-browser")
    assert res.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_line_error(res.stderr)
    assert res.stdout == ""


@contextmanager
def served(run: Path, *args: str) -> Iterator[tuple[str, object]]:
    """`cai review serve RUN --no-browser ARGS` in a child process; yields (its URL, the process)."""
    proc = cai_proc("review", "serve", run, "--no-browser", *args)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # the first line is the URL: the server is listening
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, (url, proc.stderr.read())
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=600)


def test_serve_with_allow_remote_warns_and_ctrl_c_ends_it_cleanly(run) -> None:
    with served(run, "--reviewer", "ann", "--host", "0.0.0.0", "--allow-remote") as (url, proc):
        assert _get(url, "/api/queue")["reviewer"] == "ann"  # it answers: the server runs
        lines = [proc.stderr.readline(), proc.stderr.readline()]
        assert lines[0].startswith("warning: the review page listens on 0.0.0.0:"), lines
        assert lines[1].startswith(f"reviewing {run} as ann: {len(PROMPTS)} records"), lines
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
        err = proc.stderr.read()  # what followed the two lines read
        assert proc.returncode == 0 and "Traceback" not in err and err.startswith("stopped"), err


# -- the page in a browser ------------------------------------------------------------------------------------


class Review:
    """The review page open in a fresh browser page, with every error it met."""

    def __init__(self, chromium, url: str) -> None:
        self.page = chromium.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.url = url
        self.open(url)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")

    def record(self) -> str:
        return self.page.evaluate("document.body.dataset.record")

    def key(self, key: str, target: int, decision: str) -> None:
        """Press `key` and wait until target `target` shows `decision` as saved."""
        self.page.keyboard.press(key)
        self.page.wait_for_selector(f".target[data-target='{target}'][data-decision='{decision}']")
        self.page.wait_for_selector("body:not([data-saving])")

    def go(self, key: str, rid: str) -> None:
        self.page.keyboard.press(key)
        self.page.wait_for_selector(f"body[data-record='{rid}']")

    def decisions(self) -> list[str]:
        return self.page.locator(".target").evaluate_all("els => els.map(e => e.dataset.decision)")

    def assert_clean(self) -> None:
        assert self.errors == [] and self.page.evaluate("window.__pwned") is None, self.errors


def test_review_by_keyboard_reload_and_kill_9(run, browser) -> None:  # noqa: F811 - the fixture
    with served(run, "--reviewer", "ann") as (url, proc):
        view = Review(browser, url)
        page = view.page
        assert view.record() == "p0" and page.locator("#progress").text_content() == f"0 of {len(PROMPTS)} " \
                                                                                      "records reviewed"
        targets = page.locator(".target").evaluate_all("els => els.map(e => e.dataset.item)")
        assert targets == ["critique", "critique", "pair", "pair"]  # two rounds, the revision pair, an AI-labeled pair
        view.key("a", 0, "agree")
        view.key("d", 1, "disagree")  # a decision moves to the next target: round 2
        view.key("r", 2, "rejected")  # the revision pair flips
        page.keyboard.press("k")  # back to the revision pair: edit its better side (now the draft)
        page.keyboard.press("e")
        draft = cai.open_run(run).records().set_index("id").loc["p0", "draft"]
        assert page.locator("#editor-text").input_value() == draft
        page.fill("#editor-text", "A corrected <b>answer</b>.")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#editor", state="hidden")
        page.wait_for_selector(".target[data-target='2'] .badge:text('edited')")
        page.keyboard.press("j")
        assert "P(chosen wins) 0." in page.locator(".target[data-target='3']").text_content()  # the judge's
        view.key("t", 3, "tie")  # the AI-labeled pair
        view.go("n", "p1")
        view.key("d", 0, "disagree")
        page.keyboard.press("k")  # back to it: a note on that decision
        page.keyboard.press("m")
        page.fill("#editor-text", "the critic misread it")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector(".target[data-target='0'] .mine:has-text('the critic misread it')")
        # the injected prompt and reply are text, never markup
        assert page.locator(".turn .text").first.text_content() == PROMPTS[1]
        assert INJECT in page.locator("#draft .text").text_content()
        assert page.locator("#record img, #record script").count() == 0
        view.assert_clean()

        view.open(url)  # reload: the same record, decisions kept
        assert view.record() == "p1" and view.decisions()[0] == "disagree"
        view.go("p", "p0")
        assert view.decisions() == ["agree", "disagree", "rejected", "tie"]
        assert page.locator(".target[data-target='2'] .badge:text('edited')").count() == 1
        view.assert_clean()

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=600)
    ai_pair = cai.open_run(run).pairs(reviews="ignore")["id"].loc[lambda s: s.str.startswith("p0:")].iloc[0]
    want = {("ann", "critique", "p0", 1, "", "agree", None, None),
            ("ann", "critique", "p0", 2, "", "disagree", None, None),
            ("ann", "pair", "p0", 0, "", "rejected", "A corrected <b>answer</b>.", None),
            ("ann", "critique", "p1", 1, "", "disagree", None, "the critic misread it"),
            ("ann", "pair", "p0", 0, ai_pair, "tie", None, None)}
    assert set(stored(run)) == want and len(stored(run)) == len(want)


def test_two_reviewers_with_overlap_are_blind(run, browser) -> None:  # noqa: F811 - the fixture
    view = cai.open_run(run)
    for rid in ("p0", "p2"):
        view.review(rid, "disagree", reviewer="ann", round=1, note="ann was here")
    with served(run, "--reviewer", "bob", "--overlap", "1", "--seed", "4") as (url, _):
        page = Review(browser, url)
        total = len(PROMPTS) - 1  # p0 and p2 left out, one of them back
        assert page.page.locator("#pos").text_content() == f"record 1 of {total}"
        seen = [page.record()]
        for n in range(1, total):
            page.go("n", _next_id(url, n))
            seen.append(page.record())
        for _ in seen:  # blind: none of ann's decisions or notes on any record
            assert "ann was here" not in page.page.content() and set(page.decisions()) == {""}
            if page.record() != seen[0]:
                page.go("p", seen[seen.index(page.record()) - 1])
        assert len({"p0", "p2"} & set(seen)) == 1
        overlapped = ({"p0", "p2"} & set(seen)).pop()
        while page.record() != overlapped:
            page.go("n", seen[seen.index(page.record()) + 1])
        page.key("a", 0, "agree")
        page.assert_clean()
    both = cai.open_run(run).reviews()
    on = both[(both["id"] == overlapped) & (both["item"] == "critique")]
    assert sorted(zip(on["reviewer"], on["decision"])) == [("ann", "disagree"), ("bob", "agree")]


def _get(url: str, path: str) -> dict:
    """GET `path` from the review server at `url` (its printed URL, with the token), as JSON."""
    token = url.split("token=")[1]
    req = urllib.request.Request(url.split("/?")[0] + path, headers={"X-CAI-Token": token})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _next_id(url: str, n: int) -> str:
    """The id of the record at place `n` of the queue behind `url`."""
    return _get(url, f"/api/record/{n}")["id"]
