"""`cai.constitution.votes` and `cai constitution import-votes`: public votes on statements become a constitution
layer."""

from __future__ import annotations

import codecs
import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cai.cli.votes import import_votes as import_votes_cmd
from cai.constitution import load
from cai.constitution.votes import MIN_AGREE, MIN_VOTES, import_votes, read_votes, select
from cai.errors import InputError
from cai.limits import VOTES_BYTES

DATA = Path(__file__).parent / "data"
POLIS = DATA / "polis"
CSV = DATA / "votes.csv"

# The designed outcome of tests/data/polis (see its README.md) with the defaults: reason, failing groups.
POLIS_DESIGN = {
    "0": (None, []),
    "1": (None, []),  # the 3 ungrouped participants all disagree: counted in the total, not a group
    "2": ("divisive", ["1"]),
    "3": ("divisive", ["0"]),
    "4": ("below_min_agree", []),
    "5": ("below_min_agree", []),
    "6": ("too_few_votes", []),
    "7": ("moderated_out", []),  # everyone agrees
    "8": ("too_few_votes", []),  # 26 saw it, 20 passed: 6 votes
    "9": ("below_min_agree", []),  # each group at 0.70, the ungrouped dissent pulls the total to 0.61
    "10": ("too_few_votes", ["1"]),
    "11": (None, []),  # group 0 exactly at 0.70
}
CSV_DESIGN = {"s1": (None, []), "s2": ("divisive", ["urban"]), "s3": ("too_few_votes", []),
              "s4": ("below_min_agree", []), "s5": (None, [])}


def polis_tallies() -> tuple[dict[str, dict[str, list[int]]], dict[str, int]]:
    """Independently of cai.constitution.votes: per comment, per group ("" = no group) [agree, disagree, pass];
    moderation."""
    with open(POLIS / "participants-votes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(POLIS / "comments.csv", newline="") as f:
        moderated = {r["comment-id"]: int(r["moderated"]) for r in csv.DictReader(f)}
    out: dict[str, dict[str, list[int]]] = {c: defaultdict(lambda: [0, 0, 0]) for c in moderated}
    for r in rows:
        for c in moderated:
            if r[c] != "":
                out[c][r["group-id"]][{"1": 0, "-1": 1, "0": 2}[r[c]]] += 1
    return out, moderated


def expected_outcome(tallies, moderated, min_votes, min_agree):
    """The rules of the module docstring, written again over the raw tallies."""
    outcome = {}
    for c, by_group in tallies.items():
        total = [sum(x[i] for x in by_group.values()) for i in range(3)]
        groups = {g: by_group.get(g, [0, 0, 0]) for g in ("0", "1")}

        def ok_share(t):
            return t[0] + t[1] > 0 and t[0] / (t[0] + t[1]) >= min_agree - 1e-12

        if moderated[c] == -1:
            outcome[c] = ("moderated_out", [])
        elif total[0] + total[1] < min_votes:
            outcome[c] = ("too_few_votes", [])
        elif not ok_share(total):
            outcome[c] = ("below_min_agree", [])
        elif low := [g for g, t in groups.items() if t[0] + t[1] >= min_votes and not ok_share(t)]:
            outcome[c] = ("divisive", low)
        elif few := [g for g, t in groups.items() if t[0] + t[1] < min_votes]:
            outcome[c] = ("too_few_votes", few)
        else:
            outcome[c] = (None, [])
    return outcome


def outcome(result):
    return {d.statement.id: (d.reason, d.groups) for d in result.decisions}


def test_defaults_are_documented():
    assert (MIN_VOTES, MIN_AGREE) == (10, 0.7)


def test_polis_fixture_outcome_is_the_designed_one():
    result = select(read_votes(POLIS))
    assert result.votes.format == "polis" and result.votes.groups == ["0", "1"]
    assert outcome(result) == POLIS_DESIGN
    assert [d.statement.id for d in result.kept] == ["0", "1", "11"]
    assert result.votes.warnings == []  # comments.csv's agrees/disagrees match participants-votes.csv
    tallies, moderated = polis_tallies()
    assert outcome(result) == expected_outcome(tallies, moderated, MIN_VOTES, MIN_AGREE)


@pytest.mark.parametrize(("min_votes", "min_agree"), [(5, 0.6), (12, 0.8), (1, 0.5), (20, 0.7)])
def test_polis_outcome_follows_the_rules_for_other_bars(min_votes, min_agree):
    tallies, moderated = polis_tallies()
    assert outcome(select(read_votes(POLIS), min_votes, min_agree)) == expected_outcome(
        tallies, moderated, min_votes, min_agree)


def test_polis_counts_and_ungrouped_participants():
    tallies, _ = polis_tallies()
    result = select(read_votes(POLIS))
    for d in result.decisions:
        s, raw = d.statement, tallies[d.statement.id]
        assert [s.total.agree, s.total.disagree, s.total.passes] == [sum(x[i] for x in raw.values()) for i in range(3)]
        assert set(s.groups) == {"0", "1"}  # no "" group for the participants Polis placed in no group
        for g, t in s.groups.items():
            assert [t.agree, t.disagree, t.passes] == raw.get(g, [0, 0, 0])
    one = next(d.statement for d in result.decisions if d.statement.id == "1")
    assert (one.total.agree, one.total.disagree) == (24, 5)  # 12+12 in the groups; the 3 ungrouped disagree
    assert {g: (t.agree, t.disagree) for g, t in one.groups.items()} == {"0": (12, 1), "1": (12, 1)}


def test_moderated_statement_dropped_even_with_full_agreement():
    seven = next(d for d in select(read_votes(POLIS)).decisions if d.statement.id == "7")
    assert seven.reason == "moderated_out"
    assert seven.statement.total.share == 1.0 and seven.statement.total.votes == 31
    assert all(t.share == 1.0 for t in seven.statement.groups.values())


def test_written_layer_loads_and_carries_the_votes(tmp_path):
    out = tmp_path / "sub" / "public.yaml"
    result = import_votes(POLIS, out)
    assert result.output == str(out)
    const = load(str(out))
    assert const.name == "public"
    assert [p.id for p in const.principles] == ["public-0", "public-1", "public-11"]
    p = const.principle("public-1")
    assert p.tags == ["public-input"]
    text = "The AI should say clearly when it is unsure of an answer."
    assert p.metadata["statement_id"] == "1" and p.metadata["text"] == text
    assert f'"{text}"' in p.critique and p.critique.startswith("Does the response go against this publicly")
    assert p.revision.startswith("Rewrite the response so that it respects this statement")
    assert p.revision.endswith(f'"{text}"')
    assert p.metadata["votes"] == {"agree": 24, "disagree": 5, "pass": 0, "agree_share": round(24 / 29, 4)}
    assert p.metadata["groups"] == {"0": {"agree": 12, "disagree": 1, "pass": 0, "agree_share": round(12 / 13, 4)},
                                    "1": {"agree": 12, "disagree": 1, "pass": 0, "agree_share": round(12 / 13, 4)}}
    assert const.principle("public-11").metadata["groups"]["0"]["agree_share"] == 0.7
    raw = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert list(raw) == ["name", "description", "principles"]
    assert list(raw["principles"][0]) == ["id", "critique", "revision", "tags", "metadata"]
    import_votes(POLIS, out, name="polis-public", min_votes=1, min_agree=0.5)
    assert load(str(out)).name == "polis-public"


def test_csv_outcome_and_group_columns(tmp_path):
    result = select(read_votes(CSV))
    assert result.votes.format == "csv" and result.votes.groups == ["urban", "rural"]
    assert outcome(result) == CSV_DESIGN
    s2 = result.decisions[1]
    assert "group urban" in s2.detail and s2.statement.groups["rural"].agree == 20
    out = tmp_path / "c.yaml"
    import_votes(CSV, out)
    const = load(str(out))
    assert [p.id for p in const.principles] == ["public-s1", "public-s5"]
    assert const.principle("public-s5").metadata["groups"]["urban"] == {
        "agree": 12, "disagree": 3, "pass": 6, "agree_share": 0.8}
    assert const.principle("public-s5").metadata["text"] == "The AI should offer to explain its reasoning, briefly."


def test_csv_without_groups_ids_or_pass(tmp_path):
    f = tmp_path / "v.csv"
    f.write_text("statement,agree,disagree,moderated\nBe kind.,10,0,\nBe brief.,9,0,\nBe spam.,50,0,-1\n"
                 "Be mean.,3,20,1\n")
    result = select(read_votes(f))
    assert result.votes.groups == []
    assert outcome(result) == {"1": (None, []), "2": ("too_few_votes", []), "3": ("moderated_out", []),
                               "4": ("below_min_agree", [])}


def bad(tmp_path, text: str, name: str = "v.csv") -> InputError:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InputError) as e:
        select(read_votes(f))
    return e.value


def test_bad_csv_names_file_and_line(tmp_path):
    e = bad(tmp_path, "statement,agree\nx,1\n")
    assert e.path == str(tmp_path / "v.csv") and e.line == 1 and "disagree" in str(e)
    assert str(e).startswith(f"{tmp_path / 'v.csv'}:1: ")
    e = bad(tmp_path, "statement,agree,disagree\na,1,2\n\n\"b, c\",many,2\n")
    assert e.line == 4 and "'many'" in str(e) and "agree" in str(e)
    assert bad(tmp_path, "statement,agree,disagree\na,1,-2\n").line == 2
    assert bad(tmp_path, "statement,agree,disagree\na,1.5,2\n").line == 2
    assert bad(tmp_path, "statement,agree,disagree\n\"multi\nline\",1,2\nb,x,2\n").line == 4
    e = bad(tmp_path, "statement,agree,disagree,agree_a\nx,1,2,1\n")
    assert e.line == 1 and "disagree_a" in str(e)
    assert "agree_b" in str(bad(tmp_path, "statement,agree,disagree,pass_b\nx,1,2,1\n"))
    e = bad(tmp_path, "statement,agree,disagree,agree_a,disagree_a\nx,1,2,3,0\n")
    assert e.line == 2 and "more than agree" in str(e)
    e = bad(tmp_path, "id,statement,agree,disagree\nq,x,1,2\nq,y,1,2\n")
    assert e.line == 3 and "duplicate" in str(e) and "line 2" in str(e)
    assert bad(tmp_path, "statement,agree,disagree\na,1,2,3\n").line == 2
    assert bad(tmp_path, "statement,agree,disagree\n,1,2\n").line == 2
    e = bad(tmp_path, "")
    assert e.line == 1
    (tmp_path / "latin1.csv").write_bytes("statement,agree,disagree\ncaf\xe9,1,2\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_votes(tmp_path / "latin1.csv")
    with pytest.raises(InputError, match="no such file"):
        read_votes(tmp_path / "missing.csv")


@pytest.mark.parametrize(("bom", "rows", "line"), [(b"", 5, 4), (codecs.BOM_UTF8, 5, 4), (b"", 4_000, 3_456)],
                         ids=["line-4", "line-4-after-a-bom", "line-3456"])
def test_a_bad_byte_names_its_line(tmp_path, bom, rows, line):
    lines = [b"statement,agree,disagree"] + [b"Statement %d.,10,1" % i for i in range(2, rows + 2)]
    lines[line - 1] = b"caf\xe9,10,1"
    f = tmp_path / "v.csv"
    f.write_bytes(bom + b"\n".join(lines) + b"\n")
    with pytest.raises(InputError) as e:
        read_votes(f)
    assert str(e.value).startswith(f"{f}:{line}: not UTF-8 (invalid continuation byte")


def test_a_bad_byte_in_a_polis_export_names_its_line(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(POLIS, folder)
    votes = (POLIS / "participants-votes.csv").read_bytes().splitlines()
    votes[7] += b"\xff"
    (folder / "participants-votes.csv").write_bytes(b"\n".join(votes) + b"\n")
    with pytest.raises(InputError) as e:
        read_votes(folder)
    assert str(e.value).startswith(f"{folder / 'participants-votes.csv'}:8: not UTF-8")


def test_a_votes_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "v.csv"
    with f.open("wb") as fh:
        fh.truncate(VOTES_BYTES + 1)  # sparse: nothing written to disk
    with pytest.raises(InputError) as e:
        read_votes(f)
    assert str(e.value) == f"{f}: {VOTES_BYTES + 1:,} bytes, over the 32 MiB limit for a votes file"


def test_a_layer_too_large_to_load_is_not_written(tmp_path):
    f = tmp_path / "v.csv"
    words = " ".join(["The AI should say so plainly"] * 100)  # each statement is in its principle 3 times
    f.write_text("statement,agree,disagree\n" + "".join(f"{words} {i}.,20,1\n" for i in range(300)))
    out = tmp_path / "public.yaml"
    with pytest.raises(InputError) as e:
        import_votes(f, out)
    assert str(e.value) == (f"{f}: the 300 kept statements make a layer over the 2 MiB limit for a constitution file;"
                            " raise --min-votes or --min-agree")
    assert not out.exists()


def test_bad_polis_folder(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(POLIS / "comments.csv", folder)
    with pytest.raises(InputError) as e:
        read_votes(folder)
    assert "participants-votes.csv" in str(e.value) and e.value.path == str(folder)
    votes = (POLIS / "participants-votes.csv").read_text().splitlines()
    cells = votes[5].split(",")  # line 6
    cells[6] = "2"  # the vote on comment 0: not -1, 0, 1
    votes[5] = ",".join(cells)
    (folder / "participants-votes.csv").write_text("\n".join(votes) + "\n")
    with pytest.raises(InputError) as e:
        read_votes(folder)
    assert e.value.path == str(folder / "participants-votes.csv") and e.value.line == 6
    assert "comment 0" in str(e.value)
    (folder / "participants-votes.csv").write_text("participant,0,1\n1,1,1\n")
    with pytest.raises(InputError) as e:
        read_votes(folder)
    assert e.value.line == 1 and "group-id" in str(e.value)
    comments = (POLIS / "comments.csv").read_text().replace(",moderated,", ",mod,", 1)
    (folder / "comments.csv").write_text(comments)
    with pytest.raises(InputError) as e:
        read_votes(folder)
    assert e.value.path == str(folder / "comments.csv") and e.value.line == 1 and "moderated" in str(e.value)


def test_polis_cross_check_is_a_warning(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(POLIS, folder)
    lines = (folder / "comments.csv").read_text().splitlines()
    assert lines[-1].split(",")[2] == "0"
    lines[-1] = lines[-1].replace(",26,3,", ",27,3,")
    (folder / "comments.csv").write_text("\n".join(lines) + "\n")
    result = select(read_votes(folder))
    assert outcome(result) == POLIS_DESIGN  # the counts still come from participants-votes.csv
    assert len(result.votes.warnings) == 1
    assert result.votes.warnings[0].startswith(f"{folder / 'comments.csv'}:13: comment 0 claims 27 agrees")


def test_nothing_kept_writes_nothing(tmp_path):
    out = tmp_path / "none.yaml"
    with pytest.raises(InputError, match="no statement was kept"):
        import_votes(POLIS, out, min_votes=100)
    assert not out.exists()


def cli_app() -> typer.Typer:
    app = typer.Typer()
    constitution_app = typer.Typer()
    app.add_typer(constitution_app, name="constitution")
    constitution_app.command("import-votes")(import_votes_cmd)
    return app


def test_command(tmp_path):
    out = tmp_path / "public.yaml"
    r = CliRunner().invoke(cli_app(), ["constitution", "import-votes", str(POLIS), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert "kept 3 of 12 statements, dropped 9" in lines[0] and f"wrote {out}" in lines[0]
    assert len(lines) == 10
    assert any("dropped 7 (moderated_out)" in x for x in lines)
    assert any("dropped 2 (divisive): group 1:" in x for x in lines)
    assert [p.id for p in load(str(out)).principles] == ["public-0", "public-1", "public-11"]

    r = CliRunner().invoke(cli_app(), ["constitution", "import-votes", str(CSV), "--output", str(out), "--json",
                                       "--min-votes", "3", "--min-agree", "0.6", "--name", "town"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [k["id"] for k in data["kept"]] == ["s1", "s5"]
    assert [(d["id"], d["reason"], d["failed_groups"]) for d in data["dropped"]] == [
        ("s2", "divisive", ["urban"]), ("s3", "too_few_votes", ["rural"]), ("s4", "below_min_agree", [])]
    assert data["output"] == str(out) and load(str(out)).name == "town"


def test_command_errors_are_clean(tmp_path):
    r = CliRunner().invoke(cli_app(), ["constitution", "import-votes", str(tmp_path), "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {tmp_path}: not a Polis export")
    r = CliRunner().invoke(cli_app(), ["constitution", "import-votes", str(POLIS), "-o", str(tmp_path / "x.yaml"),
                                       "--min-votes", "99"])
    assert r.exit_code == 2 and "nothing written" in r.stderr and "error:" in r.stderr
    assert not (tmp_path / "x.yaml").exists()
    r = CliRunner().invoke(cli_app(), ["constitution", "import-votes", str(POLIS)])
    assert r.exit_code == 2  # --output is required


def test_the_cai_command_has_import_votes(tmp_path):
    from helpers import cai

    out = tmp_path / "public.yaml"
    r = cai("constitution", "import-votes", POLIS, "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert [p["id"] for p in yaml.safe_load(out.read_text())["principles"]] == ["public-0", "public-1", "public-11"]
