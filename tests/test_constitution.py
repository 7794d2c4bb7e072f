import hashlib
import shutil

import pytest

from cai.constitution import builtin_names, load, resolve, sample_comparison, sample_principles
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


# -- comparison principles (AI preference labels) ---------------------------------------------------

TINY = "name: tiny\nprinciples:\n  - {id: a, critique: c, revision: r}\n"


@pytest.mark.parametrize("name", ["default", "model-spec"])
def test_shipped_comparisons(name):
    c = load(name)
    ids = [x.id for x in c.comparisons]
    assert len(ids) >= 10 and len(set(ids)) == len(ids)
    for x in c.comparisons:
        assert x.question.startswith("Which response") and x.question.endswith("?"), x.id
        assert x.tags
    tags = {t for x in c.comparisons for t in x.tags}
    assert {"harmlessness", "helpfulness", "honesty"} <= tags  # not only harm avoidance: refusals must not always win
    assert c.comparison(ids[0]).id == ids[0]
    assert len(c.comparisons_sha256) == 64


def test_sample_comparison_is_seeded_by_seed_prompt_and_pair():
    c = load("default")
    msgs = [{"role": "user", "content": "hello"}]
    a = sample_comparison(c, 1, msgs, (0, 1))
    assert sample_comparison(c, 1, msgs, (0, 1)) == a
    assert sample_comparison(c, 1, msgs, (1, 0)) == a  # the same pair in either order
    by_pair = {sample_comparison(c, 1, msgs, (i, j)).id for i in range(6) for j in range(i + 1, 6)}
    by_seed = {sample_comparison(c, s, msgs, (0, 1)).id for s in range(30)}
    by_prompt = {sample_comparison(c, 1, [{"role": "user", "content": f"q{k}"}], (0, 1)).id for k in range(30)}
    assert len(by_pair) > 1 and len(by_seed) > 1 and len(by_prompt) > 1
    assert by_seed <= {x.id for x in c.comparisons}


def test_no_comparisons_names_the_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    c = load(str(p))
    assert c.comparisons == [] and c.comparisons_sha256 == ""
    with pytest.raises(InputError) as e:
        sample_comparison(c, 0, [{"role": "user", "content": "x"}], (0, 1))
    assert str(e.value).startswith(f"{p}: ") and "comparisons:" in str(e.value)
    assert e.value.exit_code == 2


def test_duplicate_comparison_id_names_its_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(TINY + "comparisons:\n  - {id: x, question: 'Which response?'}\n  - {id: y, question: 'Which one?'}\n"
                 "  - id: x\n    question: Which again?\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:7: duplicate comparison id 'x' (first on line 5)"


def test_comparison_schema_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY + "comparisons:\n  - {id: x, question: 'Which?'}\n  - {id: 'bad id', question: 'Which?'}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert e.value.line == 6 and "comparisons.1.id" in str(e.value)
    p.write_text(TINY + "comparisons:\n  - {id: x, question: 'Which?', weight: 2}\n")
    with pytest.raises(InputError, match="comparisons.0.weight"):
        load(str(p))


@pytest.mark.parametrize("name", ["default", "model-spec"])
def test_sha256_ignores_the_comparisons_section(tmp_path, name):
    """Runs keep `sha256` in their resume fingerprint: the comparisons section (the tail of the shipped
    files, after a blank line and a comment) must not count, so adding it left the hash unchanged."""
    text = resolve(name).read_text(encoding="utf-8")
    cut = text.index("\ncomparisons:\n")
    cut = text.rindex("\n", 0, cut)  # the comment line above the key
    assert text[cut - 1:cut + 1] == "\n\n" and text[cut + 1] == "#"
    stripped = text[:cut]  # ends with the newline of the last principle line
    copy = tmp_path / f"{name}.yaml"
    shutil.copy(resolve(name), copy)
    full = load(str(copy))
    assert full.sha256 == hashlib.sha256(stripped.encode()).hexdigest()
    bare = tmp_path / "bare.yaml"
    bare.write_text(stripped, encoding="utf-8")
    assert load(str(bare)).sha256 == full.sha256 == hashlib.sha256(bare.read_bytes()).hexdigest()
    assert load(name).sha256 == full.sha256

    # Editing a comparison question: same sha256, new comparisons_sha256.
    q = full.comparisons[0].question
    copy.write_text(text.replace(q, q[:-1] + ", all things considered?"), encoding="utf-8")
    edited = load(str(copy))
    assert edited.sha256 == full.sha256 and edited.comparisons_sha256 != full.comparisons_sha256
    # Adding one, or changing the comment above the section: same sha256.
    copy.write_text(text.replace("# Comparison principles", "# Preference principles") +
                    "  - id: extra\n    question: \"Which response is better?\"\n", encoding="utf-8")
    assert load(str(copy)).sha256 == full.sha256
    # Editing a principle: a new sha256.
    crit = full.principles[0].critique
    copy.write_text(text.replace(crit, crit + " Be brief."), encoding="utf-8")
    assert load(str(copy)).sha256 != full.sha256


def test_sha256_without_comparisons_is_the_raw_bytes(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY + "# a trailing comment\n")
    assert load(str(p)).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert load("rbr-safety").sha256 == hashlib.sha256(resolve("rbr-safety").read_bytes()).hexdigest()


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_sha256_comparisons_section_in_the_middle(tmp_path, nl):
    """Only the section and the comment lines directly above it go; comments after it belong to the next
    key, and `#` lines inside the previous key's block scalar are content."""
    before = "name: mid\ndescription: |\n  text\n  # part of the description\n\n"
    section = "# comparisons for labels\ncomparisons:\n  - id: x  # trailing comment\n    question: >-\n" \
              "      Which response\n      is better?\n"
    after = "\n# the principles\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
    with_it, without = tmp_path / "with.yaml", tmp_path / "without.yaml"
    with_it.write_bytes((before + section + after).replace("\n", nl).encode())
    without.write_bytes((before + after).replace("\n", nl).encode())
    c = load(str(with_it))
    assert c.comparisons[0].question == "Which response is better?"
    assert c.description == "text\n# part of the description\n"
    assert c.sha256 == load(str(without)).sha256 == hashlib.sha256(without.read_bytes()).hexdigest()
    # Right under a block scalar, `#` lines are the scalar's: they stay in the hash.
    tight = tmp_path / "tight.yaml"
    tight.write_bytes(("name: t\ndescription: |\n  text\n  # still description\ncomparisons: []  # none yet\n"
                       + after).replace("\n", nl).encode())
    kept = ("name: t\ndescription: |\n  text\n  # still description\n" + after).replace("\n", nl).encode()
    assert load(str(tight)).sha256 == hashlib.sha256(kept).hexdigest()
