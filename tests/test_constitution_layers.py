"""Constitution layers: `extends` chains and repeated layers merge into one constitution whose items remember
their layer; a later layer may add and customize, but removing, switching off or weakening an earlier rule is an
error naming the file, the line and the rule id (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cai.constitution import check, content_sha256, load, sample_principles
from cai.constitution.tools import diff, json_schema
from cai.errors import InputError
from helpers import cai

ROOT = Path(__file__).resolve().parents[1]
TEAM = ROOT / "examples" / "constitution" / "team.yaml"
USER = ROOT / "examples" / "constitution" / "user.yaml"
NEW_RULE = ("  - id: {id}\n    statement: Never {id}.\n    critique: Does it {id}?\n    revision: Do not {id}.\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base.yaml",
                 "name: base\n"
                 "rules:\n" + NEW_RULE.format(id="leak") +
                 "defaults:\n"
                 "  - id: short\n    statement: Be short.\n    critique: Is it long?\n    revision: Shorten it.\n"
                 "  - id: polite\n    critique: Is it rude?\n    revision: Be polite.\n    tags: [style]\n"
                 "objectives:\n  - id: help\n    critique: Does it help?\n    revision: Help more.\n")


def first_problem(specs: list[str]) -> InputError:
    const, problems = check(specs)
    assert const is None and problems
    return problems[0]


def test_a_layer_adds_customizes_and_switches_off(tmp_path):
    top = write(tmp_path / "team.yaml",
                "name: team\nextends: base.yaml\n"
                "rules:\n" + NEW_RULE.format(id="swear") +
                "  - id: leak\n    tags: [privacy]\n"                 # restating a rule to add a tag is allowed
                "defaults:\n  - id: short\n    statement: One sentence.\n"  # only the statement changes
                "  - id: polite\n    enabled: false\n"
                "remove: [help]\n")
    base(tmp_path)
    c = load(str(top))
    assert [x.name for x in c.layers] == ["base", "team"] and c.name == "base+team"
    assert [(p.id, p.kind, p.layer) for p in c.principles] == [
        ("leak", "rule", "base"), ("short", "default", "team"), ("polite", "default", "team"),
        ("swear", "rule", "team")]
    short = c.principle("short")
    assert (short.statement, short.critique, short.defined_in) == ("One sentence.", "Is it long?", "base")
    assert c.principle("leak").tags == ["privacy"]
    assert not c.principle("polite").enabled and [p.id for p in c.active] == ["leak", "short", "swear"]
    msgs = [{"role": "user", "content": "hi"}]
    assert all(p.id != "polite" for s in range(20) for p in sample_principles(c, s, msgs, 3))


@pytest.mark.parametrize("entry, line, what", [  # the file starts "name: user\n# a comment\n"
    ("remove: [leak]\n", 3, "remove rule 'leak'"),
    ("rules:\n  - id: leak\n    enabled: false\n", 5, "switch off rule 'leak'"),
    ("defaults:\n  - id: leak\n    critique: Is it leaking much?\n", 4, "turn into a default rule 'leak'"),
    ("principles:\n  - id: leak\n    kind: default\n", 4, "turn into a default rule 'leak'"),
    ("objectives:\n  - id: leak\n", 4, "turn into an objective rule 'leak'"),
    ("rules:\n  - id: leak\n    tags: [x]\n    critique: Does it leak a lot?\n", 6,
     "change the critique of rule 'leak'"),
    ("rules:\n  - id: leak\n    revision: Leak less.\n", 5, "change the revision of rule 'leak'"),
    ("rules:\n  - id: leak\n    statement: Leak rarely.\n", 5, "change the statement of rule 'leak'"),
])
def test_weakening_a_rule_names_the_file_line_and_rule(tmp_path, entry, line, what):
    base(tmp_path)
    user = write(tmp_path / "user.yaml", "name: user\n# a comment\n" + entry)
    err = first_problem([str(tmp_path / "base.yaml"), str(user)])
    assert (err.path, err.line) == (str(user), line)
    assert what in str(err) and "of layer 'base'" in str(err) and err.exit_code == 2
    r = cai("constitution", "validate", "--stack", tmp_path / "base.yaml", user)
    assert r.exit_code == 2 and f"{user}:{line}: " in r.stderr and "Traceback" not in r.stderr


def test_cai_run_refuses_a_weakening_layer_before_anything_is_made(tmp_path):
    base(tmp_path)
    user = write(tmp_path / "user.yaml", "name: user\nrules:\n  - id: leak\n    enabled: false\n")
    inp = write(tmp_path / "in.jsonl", '{"prompt": "hi"}\n')
    r = cai("run", inp, "--out", tmp_path / "run", "--constitution", tmp_path / "base.yaml", "--constitution", user)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{user}:4: rules.0: layer 'user' may not switch off rule 'leak'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_extends_chains_cycles_and_missing_bases(tmp_path):
    base(tmp_path)
    write(tmp_path / "mid.yaml", "name: mid\nextends: base.yaml\nprinciples:\n  - {id: p, critique: c, revision: r}\n")
    top = write(tmp_path / "top.yaml", "name: top\nextends: mid.yaml\ndefaults:\n  - {id: short, enabled: false}\n")
    c = load(str(top))
    assert [x.name for x in c.layers] == ["base", "mid", "top"]
    again = load([str(tmp_path / "base.yaml"), str(tmp_path / "mid.yaml"), str(top)])  # given and extended: once
    assert [x.name for x in again.layers] == ["base", "mid", "top"] and again.sha256 == c.sha256
    write(tmp_path / "a.yaml", "name: a\nextends: b.yaml\nprinciples:\n  - {id: p, critique: c, revision: r}\n")
    write(tmp_path / "b.yaml", "name: b\n\nextends: a.yaml\n")
    err = first_problem([str(tmp_path / "a.yaml")])
    assert err.path == str(tmp_path / "b.yaml") and err.line == 3 and "cycle" in str(err)
    write(tmp_path / "lost.yaml", "name: lost\nextends: nowhere.yaml\n")
    err = first_problem([str(tmp_path / "lost.yaml")])
    assert err.path == str(tmp_path / "lost.yaml") and err.line == 2 and "nowhere.yaml" in str(err)


def test_layer_problems_each_name_their_line(tmp_path):
    base(tmp_path)
    user = write(tmp_path / "user.yaml",
                 "name: base\n"                                            # 1 a second layer named base
                 "principles:\n"
                 "  - id: fresh\n    critique: only a question\n"         # 3 new, without a revision
                 "  - id: also\n    critique: c\n    revision: r\n    enabled: false\n"  # 8: not a default
                 "remove: [nothing-here]\n")                               # 9
    const, problems = check([str(tmp_path / "base.yaml"), str(user)])
    assert const is None
    assert [p.line for p in problems] == [1]  # the name clash stops the merge of that layer
    write(user, user.read_text().replace("name: base", "name: user"))
    const, problems = check([str(tmp_path / "base.yaml"), str(user)])
    lines = sorted((p.line, str(p).split(": ", 1)[-1]) for p in problems)
    assert [x for x, _ in lines] == [3, 8, 9]
    assert "principles.0.revision: Field required" in lines[0][1]
    assert "only a default can be switched off" in lines[1][1]
    assert "no earlier layer defines 'nothing-here'" in lines[2][1]


def test_a_single_file_keeps_the_hash_it_always_had(tmp_path):
    """A run on one constitution file keeps its fingerprint: the stack's hash is the file's own hash."""
    path = ROOT / "constitution" / "default.yaml"
    raw = path.read_bytes()
    assert load("default").sha256 == content_sha256(raw, raw.decode(), yaml.compose(raw.decode()))
    assert load(str(TEAM)).sha256 != load("model-spec").sha256


def test_shipped_layers_show_and_diff(tmp_path):
    r = cai("constitution", "show", USER)
    assert r.exit_code == 0
    assert "use-right-tool [default, off · team, defined in model-spec]" in r.stdout
    assert "thorough-but-efficient [default · user, defined in model-spec]" in r.stdout
    assert "no-account-secrets [rule · team] (harmlessness, privacy)" in r.stdout
    shown = json.loads(cai("constitution", "show", "model-spec", TEAM, "--json").stdout)
    assert [x["name"] for x in shown["layers"]] == ["model-spec", "team"]
    assert all(p["layer"] in ("model-spec", "team") for p in shown["principles"])
    d = diff(load("model-spec"), load(str(TEAM)))
    assert d["rules"]["added"] == ["no-account-secrets"] and d["principles"]["added"] == ["plain-words"]
    assert not any(d[s]["removed"] for s in ("rules", "defaults", "principles"))
    assert {"statement", "critique", "revision", "layer"} <= set(d["defaults"]["changed"]["thorough-but-efficient"])
    assert list(d["rules"]["changed"]) == ["protect-privacy"]
    listed = cai("constitution", "list").stdout
    assert "model-spec   3 objectives, 6 rules, 10 defaults" in listed


def test_the_schema_describes_layers_and_accepts_the_examples():
    schema = json_schema()
    assert {"extends", "objectives", "rules", "defaults", "principles", "remove", "comparisons"} <= set(
        schema["properties"])
    for path in (TEAM, USER, *sorted((ROOT / "constitution").glob("*.yaml"))):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "rules": [{"id": "a", "weight": 2}]}, schema)
