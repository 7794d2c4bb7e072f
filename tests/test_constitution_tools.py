"""`cai constitution schema` and `cai constitution diff`."""

from __future__ import annotations

import json

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
        jsonschema.validate({k: v for k, v in data.items() if k != "principles"}, schema)
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
