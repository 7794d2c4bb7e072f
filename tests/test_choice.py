"""cai.core.choice: reading two-option answers from text and logprobs, and `ask` against the loopback StubServer."""

import asyncio
import math

import pytest

from cai.calls import GenConfig
from cai.core.choice import (
    A_B,
    ANSWER_MARKER,
    LOGPROB_CONFIG,
    VOTE_MAX_TOKENS,
    YES_NO,
    Usage,
    answer_after,
    answer_of,
    ask,
    norm,
    p_first_at_answer,
    p_first_from_top,
)
from cai.core.engine import Engine
from cai.providers import get_model
from cai.store import Store

MSGS = ({"role": "user", "content": "Which response is better, A or B?"},)


def lp(p):
    return math.log(p)


def test_norm_and_answer_of():
    assert [norm(t) for t in (" (A", "A)", "**A**", " Yes", "[[B]]", "'no'.", "\n", " (")] == \
        ["a", "a", "a", "yes", "b", "no", "", ""]
    assert norm("A and B") == "a and b"  # only the edges are stripped
    assert answer_of(" Yes.", YES_NO) is True and answer_of("FALSE, because", YES_NO) is False
    assert answer_of("maybe yes", YES_NO) is None and answer_of("", YES_NO) is None
    assert answer_of("(A) is better", A_B) is True and answer_of("**B**", A_B) is False
    assert answer_of("Yes", A_B) is None and answer_of("A", YES_NO) is None


def test_answer_after():
    assert answer_after("…so I pick B.\nAnswer: (A)", ANSWER_MARKER, A_B) is True
    assert answer_after("**Answer:** [[B]]", ANSWER_MARKER, A_B) is False
    assert answer_after("The answer is yes.", ANSWER_MARKER, YES_NO) is True
    assert answer_after("ANSWER：no", ANSWER_MARKER, YES_NO) is False
    # The last marker followed by an option counts; later mentions of "answer" without one do not.
    assert answer_after("Answer: A\nAnswer: B\nThat answer is well supported.", ANSWER_MARKER, A_B) is False
    assert answer_after("Answer: Ab", ANSWER_MARKER, A_B) is None  # the word goes on
    assert answer_after("A is better, B is worse.", ANSWER_MARKER, A_B) is None  # no marker
    assert answer_after("Verdict - B", r"verdict\s*-\s*", A_B) is False  # any marker


def test_p_first_from_top():
    top = [(" A", lp(0.3)), ("(A", lp(0.1)), (" B", lp(0.2)), ("The", lp(0.4))]
    assert p_first_from_top(top, A_B) == pytest.approx(0.4 / 0.6)
    assert p_first_from_top([(" Yes", lp(0.3)), ("NO", lp(0.1))], YES_NO) == pytest.approx(0.75)
    assert p_first_from_top([("The", -0.1), ("Yes", -2.0)], A_B) is None
    assert p_first_from_top([], YES_NO) is None


def rows(*tokens, at=None):
    """One position per token, that token most likely; position `at` gets the alternatives in `at[1]`."""
    out = [[(t, -0.01), (" alt", -5.0)] for t in tokens]
    if at is not None:
        out[at[0]] = at[1]
    return out


def test_p_first_at_answer():
    answer = [(" B", lp(0.3)), (" A", lp(0.6)), (" Both", lp(0.1))]
    toks = ["I", " prefer", " A", ".", "\n", "Answer", ":", " A", ""]  # "" as a stop token's text
    top = rows(*toks, at=(7, answer))
    text = "I prefer A.\nAnswer: A"
    assert p_first_at_answer(top, text, ANSWER_MARKER, A_B) == pytest.approx(2 / 3)
    assert p_first_at_answer(top, None, ANSWER_MARKER, A_B) == pytest.approx(2 / 3)
    # The chosen token is the most likely entry, wherever it is listed.
    assert p_first_at_answer(rows(*toks, at=(7, answer[::-1])), text, ANSWER_MARKER, A_B) == pytest.approx(2 / 3)
    # Punctuation between marker and option, and around the option, split over tokens.
    toks = ["**", "Answer", ":**", " (", "B", ")", "\n"]
    top = rows(*toks, at=(4, [("B", lp(0.8)), ("A", lp(0.2))]))
    assert p_first_at_answer(top, "**Answer:** (B)\n", ANSWER_MARKER, A_B) == pytest.approx(0.2)
    # The last answer counts; an option-like token elsewhere ("A" in the reasoning) does not.
    toks = ["Answer", ":", " A", ".", " No", ",", " wait", ".", " Answer", ":", " B", ".", " A", " is", " worse"]
    top = rows(*toks, at=(10, [(" B", lp(0.9)), (" A", lp(0.1))]))
    assert p_first_at_answer(top, "".join(toks), ANSWER_MARKER, A_B) == pytest.approx(0.1)


def test_p_first_at_answer_none():
    assert p_first_at_answer([], "", ANSWER_MARKER, A_B) is None
    assert p_first_at_answer(rows("I", " pick", " A"), None, ANSWER_MARKER, A_B) is None  # no marker
    assert p_first_at_answer(rows("Answer", ":", " A", "b"), None, ANSWER_MARKER, A_B) is None  # "Ab"
    # The text names another option than the most likely tokens: they are not what was sampled.
    top = rows("Answer", ":", " A", at=(2, [(" A", lp(0.6)), (" B", lp(0.4))]))
    assert p_first_at_answer(top, "Answer: B", ANSWER_MARKER, A_B) is None
    assert p_first_at_answer(top, "Answer: A", ANSWER_MARKER, A_B) == pytest.approx(0.6)
    assert p_first_at_answer(top, "no answer here", ANSWER_MARKER, A_B) is None


def test_request_settings_unchanged():
    """These settings are part of every cache key: changing them would re-ask every stored question."""
    assert LOGPROB_CONFIG == GenConfig(max_tokens=1, temperature=0.0, top_logprobs=10, seed=0)
    assert VOTE_MAX_TOKENS == 3


def test_ask_a_b_on_stub(stub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    stub_server.logprobs_fn = lambda body: [[("A", lp(0.5)), (" (A", lp(0.1)), ("B", lp(0.2)), ("The", lp(0.15))]]
    store = Store(tmp_path)

    async def go():
        engine = Engine(store, {"judge": get_model("openai:stub", stub_server.url)})
        usage = Usage()
        try:
            return await ask(engine, "judge", MSGS, 3, usage, A_B), usage
        finally:
            await engine.aclose()

    try:
        reading, usage = asyncio.run(go())
    finally:
        store.close()
    assert reading == {"p": pytest.approx(0.6 / 0.8), "method": "logprobs"}
    assert usage.calls == 1 and stub_server.count() == 1
    body = stub_server.requests[0]["body"]
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["top_logprobs"] == 10
