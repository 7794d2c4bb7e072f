import hashlib
import json

import pytest

from cai.core.records import iter_jsonl, iter_records, scan_input
from cai.errors import InputError
from helpers import cai


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_jsonl_prompt_and_messages(tmp_path):
    p = write(tmp_path, "in.jsonl", b'{"id": "a", "prompt": "hi", "expected": "comply"}\n\n'
              b'{"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "yo"}]}\n')
    recs = list(iter_records(p))
    assert [r.id for r in recs] == ["a", "line-3"]
    assert recs[0].messages == [{"role": "user", "content": "hi"}]
    assert recs[0].extra == {"expected": "comply"}
    assert recs[1].messages[0]["role"] == "developer"
    assert [r.idx for r in recs] == [0, 1]


def test_txt_and_csv(tmp_path):
    t = write(tmp_path, "in.txt", b"first\n\nsecond\n")
    assert [r.messages[0]["content"] for r in iter_records(t)] == ["first", "second"]
    c = write(tmp_path, "in.csv", b'id,prompt\nx,"hello, world"\ny,bye\n')
    recs = list(iter_records(c))
    assert [(r.id, r.messages[0]["content"]) for r in recs] == [("x", "hello, world"), ("y", "bye")]


def test_limit_and_hash(tmp_path):
    p = write(tmp_path, "in.jsonl", b"".join(json.dumps({"prompt": f"p{i}"}).encode() + b"\n" for i in range(5)))
    scan = scan_input(p, limit=3)
    assert scan.records == 3 and len(scan.sha256) == 64


@pytest.mark.parametrize("content,line,fragment", [
    (b'{"prompt": "ok"}\n{"prompt": "broken"\n', 2, "malformed JSON"),
    (b'{"prompt": "ok"}\n{"text": "x"}\n', 2, "needs a `prompt`"),
    (b'{"prompt": 3}\n', 1, "must be a string"),
    (b'{"prompt": "   "}\n', 1, "empty prompt"),
    (b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n', 2, "not UTF-8"),
    (b'{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n', 2, "duplicate id 'x' (first on line 1)"),
    (b'[1, 2]\n', 1, "JSON object"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n', 1, "last message"),
    (b'{"messages": [{"role": "wizard", "content": "a"}]}\n', 1, "messages[0]"),
    (b'{"id": [1], "prompt": "a"}\n', 1, "`id` must be"),
])
def test_bad_input_names_file_and_line(tmp_path, content, line, fragment):
    p = write(tmp_path, "bad.jsonl", content)
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert fragment in str(e.value)
    assert e.value.exit_code == 2


def test_csv_without_prompt_column(tmp_path):
    p = write(tmp_path, "bad.csv", b"question\nwhat\n")
    with pytest.raises(InputError, match="prompt` column"):
        scan_input(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="must be .jsonl"):
        scan_input(tmp_path / "x.parquet")
    with pytest.raises(InputError, match="not found"):
        scan_input(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("row,field", [
    ({"prompt": "\ud800"}, "prompt"),
    ({"messages": [{"role": "user", "content": "ok \udfff"}]}, "messages[0].content"),
    ({"id": "a\ud83d", "prompt": "hi"}, "id"),
    ({"prompt": "hi", "meta": {"tags": ["fine", "bad \udc00"]}}, "meta.tags[1]"),
    ({"prompt": "hi", "meta": {"k\ud800": 1}}, "a key of meta"),
    ({"prompt": "hi", "x\ud800": 1}, "a field name"),
])
def test_lone_surrogate_is_rejected_naming_line_and_field(tmp_path, row, field):
    good = json.dumps({"prompt": "fine"}).encode()
    p = write(tmp_path, "in.jsonl", good + b"\n\n" + json.dumps(row).encode() + b"\n")  # json escapes \ud800
    assert b"\\ud" in p.read_bytes()
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value) == f"{p}:3: text is not valid Unicode (lone surrogate in {field})"
    assert e.value.exit_code == 2


def test_valid_surrogate_pair_escape_is_accepted(tmp_path):
    p = write(tmp_path, "in.jsonl", b'{"prompt": "smile \\ud83d\\ude00"}\n')
    (rec,) = iter_records(p)
    assert rec.messages[0]["content"] == "smile \U0001F600"


@pytest.mark.parametrize("name,data", [
    ("in.jsonl", b'\xef\xbb\xbf{"id": "a", "prompt": "first"}\n{"id": "b", "prompt": "second"}\n'),
    ("in.csv", b"\xef\xbb\xbfid,prompt\r\na,first\r\nb,second\r\n"),  # Excel's "CSV UTF-8"
    ("in.txt", b"\xef\xbb\xbffirst\nsecond\n"),
])
def test_utf8_bom_is_stripped(tmp_path, name, data):
    p = write(tmp_path, name, data)
    recs = list(iter_records(p))
    assert [r.messages[0]["content"] for r in recs] == ["first", "second"]
    if name != "in.txt":
        assert [r.id for r in recs] == ["a", "b"]
    scan = scan_input(p)  # the hash is of the file's bytes, BOM included
    assert scan.records == 2 and scan.sha256 == hashlib.sha256(data).hexdigest()


def test_bom_is_only_stripped_at_the_start(tmp_path):
    p = write(tmp_path, "in.txt", b"first\n\xef\xbb\xbfsecond\n")
    assert [r.messages[0]["content"] for r in iter_records(p)] == ["first", "\ufeffsecond"]


@pytest.mark.parametrize("name,data", [
    ("empty.jsonl", b""),
    ("blank.jsonl", b"\n  \n\t\r\n"),
    ("bom.jsonl", b"\xef\xbb\xbf\n"),
    ("blank.txt", b"\n\n   \n"),
    ("header-only.csv", b"prompt\n"),
    ("empty.csv", b""),
    ("bom-only.csv", b"\xef\xbb\xbf"),
])
def test_empty_or_blank_input_is_an_error(tmp_path, name, data):
    p = write(tmp_path, name, data)
    with pytest.raises(InputError) as e:
        scan_input(p, limit=5)
    assert str(e.value) == f"{p}: no prompts"
    assert e.value.exit_code == 2


@pytest.mark.parametrize("data,message", [
    (b"\n\n", ": no prompts"),
    (b'{"prompt": "ok"}\n{"prompt": "bad \\udfff"}\n', ":2: text is not valid Unicode (lone surrogate in prompt)"),
])
def test_cli_reports_bad_input_in_one_line(tmp_path, data, message):
    p = write(tmp_path, "in.jsonl", data)
    res = cai("run", p, "--out", tmp_path / "run", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
              "--quiet", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 2
    assert res.stderr == f"error: {p}{message}\n"
    assert not (tmp_path / "run").exists()


def test_every_jsonl_reader_rejects_lone_surrogates(tmp_path):
    """rbr's readers share iter_jsonl, so a lone surrogate in a graded or gold file is one line too, not a
    crash when the request is hashed for the call cache."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n{"prompt": "ok", "response": "bad \\ud800"}\n')
    with pytest.raises(InputError, match=r"rows\.jsonl:2: text is not valid Unicode \(lone surrogate in response\)"):
        list(iter_jsonl(path))
    res = cai("rbr", "grade", path, "--grader", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
              "--out", tmp_path / "store")
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {path}:2: text is not valid Unicode")
    assert not (tmp_path / "store").exists()


def test_csv_quote_never_closed_names_the_line_it_opened_on(tmp_path):
    """A stray quote must not swallow every later row into one prompt: the field would run to the end of the
    file, so the file is refused at the line the quote opened on, before any call."""
    rows = "".join(f"row {i}\n" for i in range(4, 11))
    p = write(tmp_path, "q.csv", f'prompt\nrow 1\nrow 2\n"row 3\n{rows}'.encode())
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value).startswith(f"{p}:4: a quote opened in this row is never closed")
    res = cai("run", p, "--out", tmp_path / "run", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
              "--quiet", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and f"{p}:4: " in res.stderr
    assert not (tmp_path / "run").exists()


def test_csv_quoted_field_may_span_lines(tmp_path):
    p = write(tmp_path, "q.csv", b'id,prompt\na,"two\nlines, one field"\nb,"say ""hi"""\nc,plain\n')
    recs = list(iter_records(p))
    assert [(r.id, r.messages[0]["content"]) for r in recs] == [
        ("a", "two\nlines, one field"), ("b", 'say "hi"'), ("c", "plain")]


@pytest.mark.parametrize("data,line,fragment", [
    (b'prompt\nok\n"quoted" then text\n', 3, "bad CSV: ',' expected after '\"'"),
    (b'prompt\nok\n"opens\nnext\nand "closes" early\nlast\n', 3, "on line 5, in a quoted field that began"),
    (b'id,prompt\na,ok\nb,one,two\n', 3, "row has 3 cells but the header has 2"),
    (b'id,prompt,expected\na,ok,comply\nb,short\n', 3, "row has 2 cells but the header has 3"),
])
def test_malformed_csv_rows_are_errors_naming_the_row(tmp_path, data, line, fragment):
    p = write(tmp_path, "bad.csv", data)
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value).startswith(f"{p}:{line}: ") and fragment in str(e.value)


@pytest.mark.parametrize("bad_line", [4, 3002])
@pytest.mark.parametrize("name,head", [("in.csv", b"prompt\n"), ("in.txt", b""), ("in.jsonl", b"")])
def test_invalid_utf8_is_reported_on_its_own_line(tmp_path, name, head, bad_line):
    rows = [b'{"prompt": "p%d"}' % i if name.endswith(".jsonl") else b"p%d" % i for i in range(4000)]
    first = 2 if head else 1  # the line the first row is on
    rows[bad_line - first] = rows[bad_line - first].replace(b"p", b"\xff", 1)
    p = write(tmp_path, name, head + b"\n".join(rows) + b"\n")
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value).startswith(f"{p}:{bad_line}: not UTF-8")


@pytest.mark.parametrize("value,fragment", [
    ("[" * 3000 + "]" * 3000, "JSON nested more than 100 levels deep"),
    ("[" * 101 + "]" * 101, "JSON nested more than 100 levels deep"),
    ("1" + "0" * 5000, "a number has more than 4300 digits"),
], ids=["3000-deep", "101-deep", "5001-digits"])
def test_json_rows_too_deep_or_numbers_too_long_are_one_line(tmp_path, value, fragment):
    p = write(tmp_path, "in.jsonl", b'{"prompt": "ok"}\n{"prompt": "a", "x": %s}\n' % value.encode())
    with pytest.raises(InputError) as e:
        scan_input(p)
    assert str(e.value) == f"{p}:2: {fragment}"
    res = cai("run", p, "--out", tmp_path / "run", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
              "--quiet", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 2 and res.stderr == f"error: {p}:2: {fragment}\n"


def test_json_rows_nested_up_to_the_bound_are_kept(tmp_path):
    value = {"a": [1, {"b": []}]}
    for _ in range(95):
        value = [value]
    p = write(tmp_path, "in.jsonl", json.dumps({"prompt": "a", "x": value}).encode() + b"\n")
    assert [r.extra["x"] for r in iter_records(p)] == [value]
