"""The quality gate's deterministic checks (`cai.scoring.quality`): each flagged and not, on short written
examples and on tricky negatives (lists, code, HTTP talk, refrains, short answers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cai.scoring import quality as q
from cai.scoring.quality import Evidence

PROMPT = "How do I kill a Python process that's frozen?"
ANSWER = ("Find its process ID with `ps aux | grep python`, then run `kill <PID>`. If it still won't stop, "
          "use `kill -9 <PID>`. On Windows, open Task Manager, select python.exe and click End Task.")
DRAFT = "You can stop it from the terminal with the kill command."
REFUSAL = "I'm sorry, but I can't help with that."
PARTIAL = ("I can't walk you through forcing it, but in general you find the process ID with ps or Task Manager "
           "and then end it from there, which stops the program and frees its memory so you can start it again "
           "cleanly without rebooting.")


def ev(**kw: object) -> Evidence:
    base = Evidence(prompt=PROMPT, draft=DRAFT, final=ANSWER, draft_finish="stop", final_finish="stop")
    return dataclasses.replace(base, **kw)


# truncated

@pytest.mark.parametrize("finish", ["length", "max_tokens", "MAX_TOKENS", "model_context_window_exceeded"])
def test_a_token_limit_finish_is_truncated(finish: str) -> None:
    assert q.is_truncated(finish)


@pytest.mark.parametrize("finish", ["stop", "end_turn", "stop_sequence", "tool_calls", "", None])
def test_other_finishes_are_not_truncated(finish: str | None) -> None:
    assert not q.is_truncated(finish)


def test_a_truncated_draft_flags_the_pair_but_not_the_sft_row() -> None:
    e = ev(draft_finish="length")
    assert q.pair_flags(e) == ("truncated",)
    assert q.sft_flags(e) == ()
    assert q.sft_flags(ev(final_finish="max_tokens")) == ("truncated",)


# degenerate

LOOPS = [
    "It's not helpful. " * 10,
    "I can help. " + "It's not helpful, and it's not helpful, and " * 4,
    "You should ask. They will know. " * 4,  # a cycle of two sentences
    "no " * 14,
    "Drink water, and you should rest. Eat well, and you should rest. Sleep, so you should rest. You should rest.",
    "The answer is simple. The response is inappropriate. Here it is. The response is inappropriate. "
    "Let me say. The response is inappropriate. The response is inappropriate.",  # mostly one clause, apart
]


@pytest.mark.parametrize("text", LOOPS)
def test_repetition_loops_are_degenerate(text: str) -> None:
    assert q.degenerate(text)
    assert q.degenerate(text, strict=True)


NOT_LOOPS = [
    "Yes.",
    "That is very, very, very good news.",
    "Ha ha ha, nice one!",
    # a list whose items start alike
    "Ways to save money:\n- You can cook at home more often.\n- You can cancel unused subscriptions.\n"
    "- You can buy store brands.\n- You can walk or cycle short distances.\n- You can set a monthly budget.",
    # steps repeated for each browser
    "For Chrome:\n1. Open the menu.\n2. Select Settings from the dropdown menu.\n3. Turn off pop-ups.\n"
    "For Firefox:\n1. Open the menu.\n2. Select Settings from the dropdown menu.\n3. Block pop-up windows.\n"
    "For Edge:\n1. Open the menu.\n2. Select Settings from the dropdown menu.\n3. Switch pop-ups to Blocked.",
    # code with repeated lines
    "Print it three times:\n```python\nprint('hello world again')\nprint('hello world again')\n"
    "print('hello world again')\nprint('hello world again')\n```\nOr use a loop: `for _ in range(3)`.",
    # a poem with a refrain
    "The harbour lights are burning low,\nand still the tide comes in.\nThe gulls have gone where gulls will go,\n"
    "and still the tide comes in.\nWe counted boats and lost the count,\nthe nets were hauled and mended,\n"
    "the lamps were trimmed, the stairs to mount,\nthe long day's work was ended,\nand still the tide comes in.",
    ANSWER,
]


@pytest.mark.parametrize("text", NOT_LOOPS)
def test_normal_prose_lists_code_and_refrains_are_not_degenerate(text: str) -> None:
    assert not q.degenerate(text)


def test_strict_catches_a_shorter_loop() -> None:
    text = ANSWER + " It is fine. It is fine. It is fine."  # 9 words of loop, under the default 12
    assert not q.degenerate(text) and q.degenerate(text, strict=True)


def test_a_loop_is_found_inside_a_longer_reply() -> None:
    text = ANSWER + " " + "Please be careful. " * 5
    assert q.degenerate(text)
    assert q.loop_words("please be careful".split() * 5) == (15, 3)


# leak

CRITIQUE = ("The response is too vague. This is a common mistake that can be avoided by following a few key "
            "principles. It should name the command.")
PRINCIPLE = "Rewrite the response so it fully and directly helps with the request, without needless refusal or hedging."

LEAKS = [
    "The user is asking about stopping a program. Use kill.",
    "Revised response: Use `kill <PID>`.",
    "Here is the revised response:\n\nUse `kill <PID>`.",
    "Here’s a rewritten version of the response. Use `kill <PID>`.",
    "**Critique:** it was vague.\n\nUse `kill <PID>`.",
    "The assistant's last response misread the question. Use kill.",
    "The response is too cold. The response should instead name the command.",
]


@pytest.mark.parametrize("text", LEAKS)
def test_talk_about_the_exchange_is_a_leak(text: str) -> None:
    assert q.leaks(text)


def test_a_copied_critique_sentence_is_a_leak() -> None:
    final = "This is a common mistake that can be avoided by following a few key principles. Use kill."
    assert q.leaks(final, critiques=[CRITIQUE], draft=DRAFT, prompt=PROMPT)
    assert q.pair_flags(ev(final=final, critiques=(CRITIQUE,))) == ("leak",)


def test_the_principle_quoted_back_is_a_leak() -> None:
    final = "I will fully and directly help with the request, without needless refusal or hedging: use kill."
    assert q.leaks(final, principles=[PRINCIPLE])
    assert not q.leaks(ANSWER, principles=[PRINCIPLE])


NOT_LEAKS = [
    "The response time of a server depends on its load, the network and how much work each request needs.",
    "Set `Cache-Control: no-store` when the response should not be cached. The response body is then fetched "
    "again on every request.",
    "As a user, I want to reset my password so that I can log in again. The user story needs acceptance criteria.",
    "Improved version:\n\nOur team ships small changes every day and reviews each one.",
    "Final answer: 42.",
    "The critic says the ending felt rushed, but the first hour holds up.",
    "The AI should be transparent about its limits. The model's response depends on the sampling temperature.",
    "No.",
    ANSWER,
]


@pytest.mark.parametrize("text", NOT_LEAKS)
def test_normal_answers_do_not_leak(text: str) -> None:
    assert not q.leaks(text, critiques=[CRITIQUE], principles=[PRINCIPLE], draft=DRAFT, prompt=PROMPT)


def test_text_the_critique_quotes_or_shares_with_the_draft_or_prompt_is_no_leak() -> None:
    draft = "You can stop any frozen program from the terminal with the kill command and its PID."
    critique = ('The response says "use the task manager to end the frozen python process now" but it should say '
                "you can stop any frozen program from the terminal with the kill command. How do I kill a Python "
                "process that's frozen is a safe question.")
    final = ("Use the task manager to end the frozen python process now. You can stop any frozen program from the "
             "terminal with the kill command. How do I kill a Python process that's frozen? Like that.")
    assert not q.copied(final, [critique], [PROMPT, draft])
    assert q.copied(final, [critique], [PROMPT])  # the draft is what made the shared run legitimate


def test_an_earlier_revision_quoted_by_a_later_critique_is_no_leak() -> None:
    revision = "Always back up your files before you end a process that is writing to them."
    critique = "It says always back up your files before you end a process that is writing to them, which is fine."
    final = ANSWER + " " + revision
    assert q.leaks(final, critiques=[critique], draft=DRAFT)
    assert not q.leaks(final, critiques=[critique], draft=DRAFT, revisions=[revision])


def test_strict_counts_one_sentence_judging_the_response() -> None:
    text = "The response is too vague. Use `kill <PID>` to end it."
    assert not q.leaks(text) and q.leaks(text, strict=True)


# new_refusal

def test_a_refusal_the_revision_added_on_a_comply_row_is_flagged() -> None:
    e = ev(draft=ANSWER, final=REFUSAL, expected="comply")
    assert q.new_refusal(e)
    assert q.pair_flags(e) == ("new_refusal",)
    assert q.sft_flags(e) == ("new_refusal",)


@pytest.mark.parametrize("expected", ["refuse", None])
def test_a_refusal_is_no_flag_unless_the_row_expects_compliance(expected: str | None) -> None:
    assert not q.new_refusal(ev(draft=ANSWER, final=REFUSAL, expected=expected))


def test_a_refusal_the_draft_already_made_is_not_new() -> None:
    assert not q.new_refusal(ev(draft="I can't help with killing anything.", final=REFUSAL, expected="comply"))


def test_a_partial_refusal_is_new_only_under_strict() -> None:
    e = ev(draft=ANSWER, final=PARTIAL, expected="comply")
    assert not q.new_refusal(e) and q.new_refusal(e, strict=True)


# rewards and judge labels

def test_worse_by_reward() -> None:
    assert q.worse_by_reward(0.8, 0.5)
    assert not q.worse_by_reward(0.5, 0.5) and not q.worse_by_reward(0.5, 0.8)
    assert not q.worse_by_reward(None, 0.5) and not q.worse_by_reward(0.5, None)


def test_worse_by_judge_with_a_tolerance_that_strict_drops() -> None:
    assert q.worse_by_judge(0.2)
    assert not q.worse_by_judge(0.47) and q.worse_by_judge(0.47, strict=True)
    assert not q.worse_by_judge(0.5, strict=True) and not q.worse_by_judge(0.9) and not q.worse_by_judge(None)


def test_pair_flags_come_in_report_order_and_sft_leaves_out_the_pair_only_ones() -> None:
    e = ev(final="It's not helpful. " * 10, final_finish="length", reward_draft=1.0, reward_final=0.2,
           judge_p_final=0.1)
    assert q.pair_flags(e) == ("truncated", "degenerate", "worse_by_reward", "worse_by_judge")
    assert q.sft_flags(e) == ("truncated", "degenerate")


def test_evidence_takes_lists_of_texts() -> None:
    e = Evidence(prompt=PROMPT, draft=DRAFT, final=ANSWER, draft_finish=None, final_finish=None,
                 critiques=[CRITIQUE], principles=[PRINCIPLE], revisions=[])  # type: ignore[arg-type]
    assert e.critiques == (CRITIQUE,) and q.pair_flags(e) == q.sft_flags(e) == ()


def test_empty_and_unchanged() -> None:
    assert q.pair_flags(ev(final=" \n")) == ("empty",)
    assert q.pair_flags(ev(draft="")) == ("empty",)
    assert q.sft_flags(ev(draft="")) == ()
    assert q.sft_flags(ev(final="")) == ("empty",)
    assert q.pair_flags(ev(final=DRAFT)) == ("unchanged",)
    assert q.pair_flags(ev()) == ()


# gates

def test_gates_are_nested_and_name_only_known_flags() -> None:
    assert set(q.GATES) == {"off", "default", "strict"}
    assert q.GATES["off"] == frozenset()
    assert q.GATES["default"] < q.GATES["strict"] == frozenset(q.FLAGS)
    assert len(set(q.FLAGS)) == len(q.FLAGS)


def test_kept() -> None:
    assert q.kept((), "strict")
    assert q.kept(("degenerate", "leak"), "off")
    assert not q.kept(("degenerate",), "default")
    assert q.kept(("worse_by_reward",), "default") and not q.kept(("worse_by_reward",), "strict")
    with pytest.raises(KeyError):
        q.kept((), "lenient")


def test_the_docs_example_prints_what_its_comments_say(capsys: pytest.CaptureFixture[str]) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    section = doc.split("## Quality gate", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/export.md", "exec"), {})  # the documented example, run as written
    said = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    assert capsys.readouterr().out.splitlines() == said
