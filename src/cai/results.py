"""What a run's records yield, as plain functions over stored records (`Store.iter_records()` dicts): the
draft and final response, the rewards, and the sft / pair / critique rows that exports and `Run` tables
are made of, and `frame` (rows as a DataFrame). Nothing here reads or writes files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def draft_and_final(steps: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """A record's draft and its last revision (the draft when never revised)."""
    draft = next((s["response"] for s in steps if s["kind"] == "draft"), None)
    final = draft
    for s in steps:
        if s["kind"] == "revise":
            final = s["response"]
    return draft, final


def rewards_by_round(steps: list[dict[str, Any]]) -> dict[int, float]:
    """With --rbr: round → reward of the response after that round (0: the draft), from `grade` steps."""
    return {s["round"]: s["score"]["reward"] for s in steps if s["kind"] == "grade"}


def rewards_of(steps: list[dict[str, Any]]) -> dict[str, float] | None:
    """With --rbr: the final response's reward (chosen) and the draft's (rejected); else None."""
    grades = rewards_by_round(steps)
    if not grades:
        return None
    return {"reward_chosen": grades[max(grades)], "reward_rejected": grades[0]}


#: (sft row, pair row, critique rows, why the pair was dropped), each row None when there is none
RecordRows = tuple["dict[str, Any] | None", "dict[str, Any] | None", "list[dict[str, Any]]", "str | None"]


def record_rows(rec: dict[str, Any], min_margin: float | None = None) -> RecordRows:
    """(sft row, pair row, critique rows, why the pair was dropped) for one finished record."""
    steps = rec["steps"]
    draft, final = draft_and_final(steps)
    if draft is None or final is None:
        return None, None, [], None
    crits: list[dict[str, Any]] = []
    pending: dict[int, dict[str, Any]] = {}
    for s in steps:
        if s["kind"] == "critique":
            row = {"id": rec["id"], "round": s["round"], "principle": s["principle"], "critique": s["critique"],
                   "verdict": s["verdict"], "parsed": s["parsed"], "before": s["response"], "after": s["response"]}
            pending[s["round"]] = row
            crits.append(row)
        elif s["kind"] == "revise" and s["round"] in pending:
            pending[s["round"]]["after"] = s["response"]
    prompt = rec["messages"]
    sft = {"id": rec["id"], "messages": [*prompt, {"role": "assistant", "content": final}]}
    dropped = "empty" if not final.strip() or not draft.strip() else ("unchanged" if final == draft else None)
    rewards = rewards_of(steps)
    if rewards and dropped is None and min_margin is not None and \
            rewards["reward_chosen"] - rewards["reward_rejected"] < min_margin:
        dropped = "margin"
    pair = None
    if dropped is None:
        pair = {"id": rec["id"], "prompt": prompt,
                "chosen": [{"role": "assistant", "content": final}],
                "rejected": [{"role": "assistant", "content": draft}],
                "metadata": {"principles": [c["principle"] for c in crits], "rounds": len(crits),
                             "violations": [bool(c["verdict"]["violates"]) if c["verdict"] else None
                                            for c in crits]}}
        if rewards:
            pair.update(rewards)
    return sft, pair, crits, dropped


def developer_as_system_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` with every `developer` turn given the `system` role (keys keep their order)."""
    return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The last user turn's text (what a person reads as "the prompt")."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def frame(rows: list[dict[str, Any]], columns: list[str] | None) -> pd.DataFrame:
    """`rows` as a DataFrame (with `columns`, in that order, also when empty). pandas, which loads pyarrow
    (~80 MB), is imported on the first table asked for, not by every `cai run` that only gets a `Run` back."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
