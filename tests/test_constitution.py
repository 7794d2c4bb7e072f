import pytest

from cai.constitution import builtin_names, load, sample_principles
from cai.errors import InputError


def test_shipped_constitutions_load():
    names = builtin_names()
    assert {"default", "model-spec"} <= set(names)
    default = load("default")
    assert len(default.principles) >= 16
    assert len(default.sha256) == 64
    spec = load("model-spec")
    kinds = {p.kind for p in spec.principles}
    assert {"rule", "default"} <= kinds
    ids = {p.id for p in spec.principles}
    assert {"ask-clarifying-questions", "express-uncertainty", "dont-try-to-change-minds"} <= ids


def test_sampling_is_seeded_by_seed_and_prompt():
    c = load("default")
    msgs = [{"role": "user", "content": "hello"}]
    a = [p.id for p in sample_principles(c, 1, msgs, 4)]
    b = [p.id for p in sample_principles(c, 1, msgs, 4)]
    assert a == b and len(set(a)) == 4
    others = {tuple(p.id for p in sample_principles(c, s, msgs, 4)) for s in range(2, 8)}
    assert len(others) > 1
    other_prompt = [p.id for p in sample_principles(c, 1, [{"role": "user", "content": "bye"}], 4)]
    assert other_prompt != a or len(c.principles) < 3


def test_more_rounds_than_principles(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("name: tiny\nprinciples:\n  - {id: a, critique: c, revision: r}\n")
    c = load(str(p))
    assert [x.id for x in sample_principles(c, 0, [{"role": "user", "content": "x"}], 3)] == ["a", "a", "a"]


def test_broken_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\nprinciples:\n  - id: a\n    critique: [unclosed\n    revision: r\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg
    assert e.value.line is not None and e.value.line >= 4


def test_schema_error_names_line(tmp_path):
    p = tmp_path / "schema.yaml"
    p.write_text("name: s\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n  - id: b\n    critique: c\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert e.value.line == 6
    assert "principles.1.revision" in str(e.value)


def test_unknown_constitution():
    with pytest.raises(InputError, match="unknown constitution 'nope'"):
        load("nope")


def test_duplicate_principle_id_names_its_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: dup\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n"
                 "  - id: b\n    critique: c\n    revision: r\n"
                 "  - critique: c\n    id: a\n    revision: r\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:10: duplicate principle id 'a' (first on line 3)"
    assert e.value.exit_code == 2


def test_duplicate_proposition_id_names_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: dup\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
                 "propositions:\n  - {id: q, question: one}\n  - {id: r, question: two}\n"
                 "  - {id: q, question: three}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:7: duplicate proposition id 'q' (first on line 5)"


def test_duplicate_yaml_key_names_its_line(tmp_path):
    p = tmp_path / "dup.yaml"  # a second `principles:` would silently replace the first
    p.write_text("name: dup\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
                 "description: d\nprinciples:\n  - {id: b, critique: c, revision: r}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:5: duplicate key 'principles' (first on line 2)"
    p.write_text("name: dup\nprinciples:\n  - {id: a, critique: c, revision: r, critique: again}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:3: duplicate key 'critique' (first on line 3)"
