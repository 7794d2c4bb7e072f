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
            verdict = s["verdict"]
            row = {"id": rec["id"], "round": s["round"], "principle": s["principle"], "layer": s.get("layer"),
                   "kind": s.get("principle_kind"), "critique": s["critique"], "verdict": verdict,
                   "parsed": s["parsed"], "rule_override": verdict.get("rule_override") if verdict else None,
                   "before": s["response"], "after": s["response"]}
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


def label_rows(rec: dict[str, Any], min_margin: float = 0.0, rank_by: str = "judge"
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(preference pairs, comparisons, near-ties) of a record's latest `label` step (see `cai.scoring.Labeler`):
    a pair for every two candidates whose margin under the `rank_by` ranking exceeds `min_margin`; the others
    are near-ties. No label step: nothing."""
    step = next((s for s in reversed(rec["steps"]) if s["kind"] == "label"), None)
    if step is None:
        return [], [], 0
    cands, judge = step["candidates"], step.get("judge")
    comps = {(c["a"], c["b"]): c for c in step["comparisons"]}
    ranking = (step.get("rankings") or {}).get(rank_by) or {}
    pairs: list[dict[str, Any]] = []
    near = 0
    for p in ranking.get("pairs", []):
        if p["margin"] <= min_margin:
            near += 1
            continue
        i, j = p["chosen"], p["rejected"]
        c = comps.get((i, j)) or comps.get((j, i)) or {}
        flip = (i, j) not in comps  # the comparison showed the rejected one as (A)
        # P(chosen wins) when it was shown as (A), and when it was shown as (B)
        p_first, p_second = ((c["p_ba"], 1 - c["p_ab"]) if flip else (c["p_ab"], 1 - c["p_ba"])) if c else (None, None)
        pairs.append({
            "id": f"{rec['id']}:{cands[i]['source']}{cands[i]['n']}>{cands[j]['source']}{cands[j]['n']}",
            "prompt": rec["messages"], "chosen": [{"role": "assistant", "content": cands[i]["response"]}],
            "rejected": [{"role": "assistant", "content": cands[j]["response"]}],
            "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"], "source": "ai_label",
            "label": {"principle": c.get("principle"), "p_chosen_first": p_first, "p_chosen_second": p_second,
                      "margin": p["margin"], "rank_by": rank_by, "method": c.get("method"), "judge": judge}})
    rows = [{"id": rec["id"], "a": c["a"], "b": c["b"], "source_a": cands[c["a"]]["source"],
             "source_b": cands[c["b"]]["source"], "response_a": cands[c["a"]]["response"],
             "response_b": cands[c["b"]]["response"], "principle": c["principle"], "p_ab": c["p_ab"],
             "p_ba": c["p_ba"], "p": c["p"], "method": c["method"], "judge": judge} for c in step["comparisons"]]
    return pairs, rows, near


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
