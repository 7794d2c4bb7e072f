import json

import pytest

from cai.errors import InputError
from cai.records import iter_records, validate_input


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
    n, sha = validate_input(p, limit=3)
    assert n == 3 and len(sha) == 64


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
        validate_input(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert fragment in str(e.value)
    assert e.value.exit_code == 2


def test_csv_without_prompt_column(tmp_path):
    p = write(tmp_path, "bad.csv", b"question\nwhat\n")
    with pytest.raises(InputError, match="prompt` column"):
        validate_input(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="must be .jsonl"):
        validate_input(tmp_path / "x.parquet")
    with pytest.raises(InputError, match="not found"):
        validate_input(tmp_path / "missing.jsonl")
