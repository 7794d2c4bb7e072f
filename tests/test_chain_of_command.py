"""The chain of command in the loop, on the loopback OpenAI server with the real SDK: a layered constitution's
rules and defaults reach the critic and the reviser, a developer's customization reaches both, a user's attempt
to override a rule is flagged and handed to the reviser, and critique rows record each principle's layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import cai
from cai.constitution import load
from cai.errors import ConfigMismatch
from cai.prompts import render
from cai.store import Store
from servers import StubServer, normalize_messages

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "chain_of_command.jsonl"
TEAM = ROOT / "examples" / "constitution" / "team.yaml"
ROWS = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
OVERRIDES = {r["id"]: r["messages"][-1]["content"] for r in ROWS if r["kind"] == "overrides_rule"}
CUSTOMIZING = {r["id"]: r["messages"][0]["content"] for r in ROWS if r["kind"] == "customizes_default"}


def last_user(body: dict[str, Any]) -> str:
    return [m for m in normalize_messages("openai", body) if m["role"] == "user"][-1]["content"]


def system(body: dict[str, Any]) -> str:
    return normalize_messages("openai", body)[0]["content"]


def critic_flags_overrides(kind: str, body: dict[str, Any]) -> str | None:
    """A critic that sees an override attempt exactly when the user's own words are one of the shipped
    override prompts (and that always finds the response at fault, so every round revises)."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    if "rule_override" not in schema.get("properties", {}):
        return None
    turn = last_user(body)
    found = any(text in turn for text in OVERRIDES.values())
    return json.dumps({"critique": "It went along with the user." if found else "Too long.", "violates": True,
                       "severity": 2, "rule_override": found})


@pytest.fixture(scope="module")
def layered_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("coc") / "run"
    with StubServer(reply_fn=critic_flags_overrides) as srv:
        run = cai.run(PROMPTS, out=out, model="openai:stub", base_url=srv.url, rounds=2, max_tokens=32,
                      constitution=["model-spec", str(TEAM)])
        requests = [r["body"] for r in srv.requests if r["path"].endswith("/chat/completions")]
    return run, requests


def by_role(requests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Requests sorted by role: the critic's carry the verdict schema, the reviser's the reviser's system
    prompt, the rest are the generator's drafts."""
    out: dict[str, list[dict[str, Any]]] = {"critic": [], "reviser": [], "generator": []}
    for body in requests:
        head = system(body)
        role = ("critic" if head.startswith(render("critic_system")) else
                "reviser" if head.startswith(render("reviser_system")) else "generator")
        out[role].append(body)
    return out


def test_rules_and_customized_defaults_reach_the_critic_and_reviser(layered_run):
    _, requests = layered_run
    roles = by_role(requests)
    assert len(roles["critic"]) == 2 * len(ROWS) and len(roles["reviser"]) == 2 * len(ROWS)
    const = load(["model-spec", str(TEAM)])
    for body in roles["critic"] + roles["reviser"]:
        head = system(body)
        assert "Order of authority" in head
        for rule in const.section("rules"):  # the platform's rules and the team's own
            assert f"- {rule.id}: {rule.statement}" in head
        assert "- thorough-but-efficient: Answer in at most three short sentences" in head  # the team's version
        assert "use-right-tool" not in head  # switched off by the team
    assert all(render("critic_override") in system(b) for b in roles["critic"])
    assert all(render("reviser_authority") in last_user(b) for b in roles["reviser"])


def test_a_developer_customization_reaches_every_prompt_of_its_record(layered_run):
    _, requests = layered_run
    roles = by_role(requests)
    for rid, instruction in CUSTOMIZING.items():
        drafts = [b for b in roles["generator"] if any(m["content"] == instruction for m in b["messages"])]
        assert drafts and drafts[0]["messages"][0]["role"] in ("developer", "system")  # the generator sees it
        critic = [b for b in roles["critic"] if instruction in last_user(b)]
        reviser = [b for b in roles["reviser"] if instruction in last_user(b)]
        assert len(critic) == 2 and len(reviser) == 2, rid
        assert all(f"Developer: {instruction}" in last_user(b) or f"System: {instruction}" in last_user(b)
                   for b in critic + reviser)


def test_an_override_attempt_is_flagged_and_the_reviser_is_told(layered_run):
    run, requests = layered_run
    crit = run.critiques()
    flagged = crit.groupby("id")["rule_override"].all()
    assert set(flagged[flagged].index) == set(OVERRIDES)
    assert not crit[crit["id"].isin(list(CUSTOMIZING))]["rule_override"].any()
    warned = [b for b in by_role(requests)["reviser"] if render("override_found") in last_user(b)]
    assert len(warned) == 2 * len(OVERRIDES)
    assert all(any(text in last_user(b) for text in OVERRIDES.values()) for b in warned)
    rows = [json.loads(x) for x in (run.path / "critiques.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows if r["rule_override"]} == set(OVERRIDES)
    assert all(r["verdict"]["rule_override"] is r["rule_override"] for r in rows)


def test_critique_rows_record_the_layer_and_kind_of_each_principle(layered_run):
    run, _ = layered_run
    const = load(["model-spec", str(TEAM)])
    rows = [json.loads(x) for x in (run.path / "critiques.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(ROWS)
    for r in rows:
        p = const.principle(r["principle"])
        assert (r["layer"], r["kind"]) == (p.layer, p.kind)
        assert r["principle"] != "use-right-tool"  # switched off: never sampled
    assert {r["layer"] for r in rows} <= {"model-spec", "team"}
    manifest = json.loads((run.path / "manifest.json").read_text())
    meta = manifest["constitution"]
    assert [x["name"] for x in meta["layers"]] == ["model-spec", "team"]
    assert meta["specs"] == ["model-spec", str(TEAM)] and meta["sha256"] == const.sha256
    assert [x["sha256"] for x in meta["layers"]] == [x.sha256 for x in const.layers]
    assert set(run.principle_stats()["layer"].dropna()) <= {"model-spec", "team"}


def test_the_fingerprint_covers_every_layer(tmp_path):
    team = tmp_path / "team.yaml"
    shutil.copy(TEAM, team)
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    with StubServer() as srv:
        opts = {"out": tmp_path / "run", "model": "openai:stub", "base_url": srv.url, "rounds": 1, "max_tokens": 16}
        first = cai.run(rows, constitution=["model-spec", str(team)], **opts)
        store = Store.open_run(first.path, readonly=True)
        try:
            fp = store.get_meta("fingerprint")
        finally:
            store.close()
        assert list(fp["constitution_layers"]) == ["model-spec", "team"]
        again = cai.run(rows, constitution=["model-spec", str(team)], **opts)
        assert again.invocation["calls"] == 0
        team.write_text(team.read_text().replace("three short sentences", "two short sentences"))
        with pytest.raises(ConfigMismatch, match="constitution layer\\(s\\) 'team'"):
            cai.run(rows, constitution=["model-spec", str(team)], **opts)
    assert fp["constitution_sha256"] != load("model-spec").sha256


def test_a_constitution_without_rules_or_defaults_keeps_its_prompts(tmp_path):
    """`default` has neither rules nor defaults: no order of authority, the verdict schema as it always was."""
    with StubServer() as srv:
        cai.run(["Tell me a joke."], out=tmp_path / "r", model="openai:stub", base_url=srv.url, rounds=1,
                max_tokens=16)
        bodies = [r["body"] for r in srv.requests if r["path"].endswith("/chat/completions")]
    assert bodies and not any("Order of authority" in system(b) for b in bodies)
    schemas = [b["response_format"]["json_schema"]["schema"] for b in bodies if b.get("response_format")]
    assert schemas and all("rule_override" not in s["properties"] for s in schemas)
