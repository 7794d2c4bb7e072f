"""`cai constitution schema` and `cai constitution diff`."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cai.constitution import builtin_names, resolve
from helpers import cai


def test_the_schema_accepts_every_shipped_constitution_and_refuses_bad_files(tmp_path):
    r = cai("constitution", "schema")
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    for name in builtin_names():
        jsonschema.validate(yaml.safe_load(resolve(name).read_text()), schema)
    data = yaml.safe_load(resolve("default").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "principals": []}, schema)  # an unknown key (a typo)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "principles": [{"critique": "an item without an id"}]}, schema)
    out = tmp_path / "schema.json"
    assert cai("constitution", "schema", "-o", out).exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_diff_names_what_was_added_removed_and_changed_by_id(tmp_path):
    data = yaml.safe_load(resolve("default").read_text())
    first, second, *_ = data["principles"]
    changed = {**data, "principles": [{**first, "critique": first["critique"] + " Also check tone."},
                                      *data["principles"][2:],
                                      {"id": "team-tone", "critique": "Is it curt?", "revision": "Be kind."}]}
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    r = cai("constitution", "diff", "default", path)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert "+ principles team-tone" in lines and f"- principles {second['id']}" in lines
    assert f"~ principles {first['id']}: critique" in lines
    d = json.loads(cai("constitution", "diff", "default", path, "--json").stdout)
    assert d["principles"]["added"] == ["team-tone"] and d["principles"]["removed"] == [second["id"]]
    assert d["principles"]["changed"][first["id"]]["critique"]["to"].endswith("Also check tone.")
    same = cai("constitution", "diff", "default", "default")
    assert same.exit_code == 0 and "(no differences)" in same.stdout


def test_diff_exit_codes_are_documented_and_kept(tmp_path):
    """0 the same, 1 they differ (with or without --json), 2 a missing file: in --help, in the docs, and as run."""
    docs = (Path(__file__).parents[1] / "docs" / "constitution.md").read_text()
    for text in (cai("constitution", "diff", "--help").stdout, docs):
        flat = " ".join(text.split())
        assert "0 the same" in flat or "0 when the two are the same" in flat, text
        assert "1 they differ" in flat or "1 when they differ" in flat
    assert cai("constitution", "diff", "model-spec", "model-spec", "--json").exit_code == 0
    assert cai("constitution", "diff", "default", "model-spec").exit_code == 1
    assert cai("constitution", "diff", "default", "model-spec", "--json").exit_code == 1
    missing = cai("constitution", "diff", "default", tmp_path / "nope.yaml")
    assert missing.exit_code == 2 and "nope.yaml" in missing.stderr and missing.stdout == ""


def test_validate_reports_every_problem_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"                                     # 1
        "principles:\n"                                   # 2
        "  - id: a\n"                                     # 3
        "    critique: Is it kind?\n"                     # 4
        "    revision: Be kind.\n"                        # 5
        "  - id: a\n"                                     # 6  duplicate id
        "    critique: Is it short?\n"                    # 7
        "    revision: Be short.\n"                       # 8
        "comparisons:\n"                                  # 9
        "  - id: c\n"                                     # 10
        "    question: Which is kinder?\n"                # 11
        "  - id: c\n"                                     # 12 duplicate id
        "    question: Which is shorter?\n")              # 13
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nprinciples:\n  - id: a\n    critique: x\n    revison: y\n"
                    "description: one\ndescription: two\n")
    r = cai("constitution", "validate", "default", bad, typo, tmp_path / "missing.yaml")
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert f"{bad}:6: duplicate principle id 'a' (first on line 3)" in lines
    assert f"{bad}:12: duplicate comparison id 'c' (first on line 10)" in lines
    assert any(x.startswith(f"{typo}:7: duplicate key 'description'") for x in lines)  # all of them, not the first
    assert any(x.startswith(f"{typo}:5: principles.0.revison") for x in lines)
    assert any(x.startswith(f"{typo}:") and "principles.0.revision" in x for x in lines)
    assert any("missing.yaml" in x for x in lines) and any(": ok (" in x for x in lines)  # default is fine
    assert lines[-1] == "6 problem(s) in 4 file(s)"
    assert cai("constitution", "validate", "default", "model-spec").exit_code == 0
