"""The run options, each declared once: `RunOptions`, one annotated key per option of `cai run` / `cai.arun`.

    rounds: Annotated[int, Option("Critique → revise rounds.", "loop.rounds")]

A key's type is what the library accepts; its `Option` says which settings field(s) it sets (`cai.settings`),
its help text and its command-line form. The default and the bounds are the settings field's own, so
`RunSettings.from_options` (the one place that resolves options into settings), the typer parameters of
`cai run` and `cai batch submit` (`cai.cli.options`) and the keywords of `cai.arun` all come from here.
An option the caller did not give is absent (or None): it takes the field's default.
"""

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict, get_args

Format = Literal["jsonl", "parquet"]
QualityGate = Literal["strict", "default", "off"]
ReviewMode = Literal["apply", "only", "ignore"]
ReviewPolicy = Literal["majority", "unanimous", "latest"]
GraderMode = Literal["separate", "joint"]
CandidatesFrom = Literal["samples", "revisions", "samples+revisions"]
RankBy = Literal["judge", "rbr", "judge+rbr"]
Engine = Literal["local", "ray"]
Requantize = Literal["auto", "q8_0", "q4_0", "off"]
LogFormat = Literal["text", "json"]
PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class Option:
    """One run option. `to`: the settings fields it sets, "part.field" separated by spaces ("" for a switch that
    sets none, with its own `default`). `shorthand`: the fields have options of their own, which win (`model`).
    `shown`: the command line shows the field's default (else its help says the default in words and the
    parameter's default is None). `needs_rbr`: refused without `rbr` (it compares rewards). `batch`: also an
    option of `cai batch submit`. `path`: a file path (the settings keep it as a string). `flags`: typer's
    parameter declarations where they are not `--name`. `min`: the command line's lower bound where it is
    stricter than the field's. `panel`: its panel of `cai run --help` (one of PANELS) where it is not the one of
    the settings part it sets (`help_panel`)."""

    help: str | None
    to: str = ""
    default: Any = None
    shorthand: bool = False
    shown: bool = True
    needs_rbr: bool = False
    batch: bool = True
    path: bool = False
    flags: tuple[str, ...] = ()
    min: float | None = None
    panel: str = ""

    @property
    def help_panel(self) -> str:
        """The panel of `cai run --help` (and `cai batch submit --help`) that lists the option."""
        return self.panel or (PART_PANELS.get(self.targets[0].split(".")[0], "") if self.targets else "")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.to.split())

    def sets(self, part: str) -> bool:
        """Whether the option sets a field of the settings part `part` (e.g. "scoring")."""
        return any(t.split(".")[0] == part for t in self.targets)


#: The panels of `cai run --help`, in order; an option is in the one of the settings part it sets (PART_PANELS)
#: unless its declaration names another.
PANELS = ("Models", "Loop", "Execution", "Rewards", "Labels", "Export")
PART_PANELS = {"models": "Models", "generation": "Models", "loop": "Loop", "io": "Execution",
               "execution": "Execution", "scoring": "Rewards", "labels": "Labels", "export": "Export"}
_NO_BATCH = {"batch": False}  # pacing, retries of failed records, the engine and the embedded model


class RunOptions(TypedDict, total=False):
    """The keyword options of `cai.arun` / `cai.run` / `cai.batch.submit`, as `cai run` names them."""

    out: Annotated[PathArg | None, Option("Run folder (default runs/<input name>).", "io.out", path=True,
                                          shown=False)]
    model: Annotated[str, Option("Model for every role: local, local:PATH.gguf, openai:NAME, anthropic:NAME.",
                                 "models.generator models.critic models.reviser", shorthand=True)]
    generator: Annotated[str | None, Option("Model that drafts (overrides --model).", "models.generator",
                                            shown=False)]
    critic: Annotated[str | None, Option("Model that critiques (overrides --model).", "models.critic", shown=False)]
    reviser: Annotated[str | None, Option("Model that revises (overrides --model).", "models.reviser", shown=False)]
    base_url: Annotated[str | None, Option("OpenAI-compatible or Anthropic base URL.", "models.base_url")]
    constitution: Annotated[str | Sequence[str], Option(
        "Shipped name or path to a YAML file (default: default); repeat it to stack layers, platform first "
        "(see docs/constitution.md).", "loop.constitution", shown=False)]
    rounds: Annotated[int, Option("Critique → revise rounds.", "loop.rounds")]
    stop_when_clean: Annotated[bool, Option("Stop when the critic finds no violation.", "loop.stop_when_clean")]
    fewshot: Annotated[int | None, Option("Worked examples in the critic's and reviser's prompts (default: all in "
                                          "prompts/fewshot.yaml).", "loop.fewshot", shown=False)]
    max_tokens: Annotated[int, Option("Max tokens per reply.", "generation.max_tokens")]
    temperature: Annotated[float, Option(None, "generation.temperature")]
    seed: Annotated[int, Option("Seeds principle sampling and model sampling.", "generation.seed")]
    concurrency: Annotated[int, Option("Records in flight.", "execution.concurrency", **_NO_BATCH)]
    limit: Annotated[int | None, Option("Only the first N prompts.", "io.limit")]
    max_retries: Annotated[int, Option("Retries per call on 429/5xx/timeouts.", "execution.max_retries")]
    timeout: Annotated[float, Option("Seconds per call attempt.", "generation.timeout", min=0.01, panel="Execution")]
    rpm: Annotated[int | None, Option("Max requests per minute per endpoint.", "execution.rpm", **_NO_BATCH)]
    tpm: Annotated[int | None, Option("Max (estimated) tokens per minute per endpoint.", "execution.tpm",
                                      **_NO_BATCH)]
    format: Annotated[Format, Option("Export format.", "export.format")]
    system_role_for_developer: Annotated[bool, Option(
        "Write `developer` turns of prompts as `system` in sft and pairs (most chat templates reject a developer "
        "role).", "export.system_role_for_developer", flags=("--system-role-for-developer/--keep-developer-role",))]
    restart: Annotated[bool, Option("Move an existing run aside and start afresh.", default=False, panel="Execution")]
    retry_failed: Annotated[bool, Option("Retry only the records that failed.", "execution.retry_failed", **_NO_BATCH)]
    prices: Annotated[PathArg | None, Option("Price table JSON for the cost estimate: overrides the built-in "
                                             "prices (genai-prices) of the models it matches.", "execution.prices",
                                             path=True)]
    max_cost: Annotated[float | None, Option(
        "Budget in USD over every invocation of the run: a call is not sent if its worst case (its prompt, and a "
        "reply at the token limit, at the model's price) could cross it; the run then stops (exit 5; a re-run "
        "keeps the budget, a higher one goes on). See docs/cost.md.", "execution.max_cost")]
    cache: Annotated[PathArg | None, Option("Call cache shared by runs (a SQLite file, created if missing): "
                                            "identical calls are answered from it.", "execution.cache", path=True)]
    engine: Annotated[Engine, Option("local: this process; ray: shard the records to Ray worker actors (pip install "
                                     "'cai[ray]'; see docs/ray.md).", "execution.engine", **_NO_BATCH)]
    ray_address: Annotated[str | None, Option("With --engine ray: 'auto' or HOST:PORT of a running cluster "
                                              "(default: start a local one).", "execution.ray_address", **_NO_BATCH)]
    workers: Annotated[int | None, Option("With --engine ray: worker actors (default: the cluster's CPUs, at most "
                                          "8).", "execution.workers", **_NO_BATCH)]
    local_slots: Annotated[int | None, Option(
        "Sequences the embedded model decodes together, each role's prompt prefix kept warm (default 1: one at a "
        "time, as before; or CAI_LOCAL_SLOTS).", "execution.local_slots", **_NO_BATCH)]
    local_requantize: Annotated[Requantize | None, Option(
        "Weights a local model loads: auto (default, or CAI_LOCAL_REQUANTIZE): the shipped GGUF requantized once "
        "to Q8_0 in cai's cache folder, a file of your own as it is; q8_0 or q4_0: requantized; off: as the file "
        "has them (see docs/local.md).", "models.local_requantize", **_NO_BATCH)]
    rbr: Annotated[bool, Option("Rule-based rewards: grade the draft and each revision, tell the reviser what "
                                "failed, put rewards on the pairs.", default=False, panel="Rewards")]
    scorer: Annotated[str, Option("With --rbr: the scorer plugin that grades each response (an installed "
                                  "'scorer.NAME' of cai.plugins; see docs/architecture.md).", "scoring.scorer")]
    grader: Annotated[str | None, Option("Model that grades propositions (default: the critic).", "scoring.grader")]
    rbr_constitution: Annotated[str | None, Option("Constitution with propositions (default: the run's if it has "
                                                   "them, else rbr-safety).", "scoring.constitution")]
    grader_mode: Annotated[GraderMode, Option("A call per proposition, or one structured call per response.",
                                              "scoring.mode")]
    votes: Annotated[int, Option("Sampled answers per question when the grader or judge has no logprobs.",
                                 "scoring.votes labels.votes")]
    weights: Annotated[PathArg | None, Option("Reward weights JSON (default: shipped).", "scoring.weights",
                                              path=True)]
    rbr_feedback: Annotated[bool, Option("Give the reviser the failed propositions/checks.", "scoring.feedback")]
    quality_gate: Annotated[QualityGate, Option(
        "Which quality flags keep a pair or sft row out of the exports (see docs/export.md); an export setting: "
        "changing it on a finished run rewrites the exports without a model call.", "export.quality_gate")]
    reviews: Annotated[ReviewMode, Option(
        "People's review decisions (cai review; docs/review.md): apply them to the pairs and sft rows, write only "
        "the pairs people decided, or ignore them. An export setting, like --quality-gate.", "export.reviews")]
    review_policy: Annotated[ReviewPolicy, Option(
        "Where reviewers differ on a pair: the decision of more than half of them, of all of them (else the pair "
        "is dropped), or the latest one.", "export.review_policy")]
    min_reward_margin: Annotated[float | None, Option(
        "Revision pairs (with --rbr): keep one only if its reward improved by at least this, in reward units "
        "(default: keep all). Labeled pairs: --min-margin.", "export.min_reward_margin", needs_rbr=True)]
    candidates: Annotated[int, Option("AI preference labels: responses sampled per prompt (the draft and K-1 "
                                      "more); 2 or more are judged pairwise.", "loop.candidates", panel="Labels")]
    candidates_from: Annotated[CandidatesFrom, Option(
        "Candidates to judge: the samples, the draft and its revisions, or both.", "loop.candidates_from",
        panel="Labels")]
    labeler: Annotated[str, Option("The labeler plugin that labels the candidates (an installed 'labeler.NAME' of "
                                   "cai.plugins; see docs/architecture.md).", "labels.labeler")]
    judge: Annotated[str | None, Option("Model that judges candidates (default: the critic).", "labels.judge")]
    cot: Annotated[bool, Option("The judge reasons before answering (labels clamped to [0.4, 0.6]).", "labels.cot")]
    min_margin: Annotated[float | None, Option(
        "Labeled pairs (with --candidates): keep one only if P(chosen ≻ rejected) - 0.5 exceeds this, 0 to 0.5 "
        "(default 0). Revision pairs: --min-reward-margin.", "labels.min_margin", shown=False, panel="Export")]
    rank_by: Annotated[RankBy | None, Option("Rank candidates by the judge (default), the RBR reward, or both "
                                             "(needs --rbr).", "labels.rank_by", shown=False)]
    log_every: Annotated[float, Option("Seconds between progress lines when stderr is not a terminal (cron, CI, "
                                       "nohup, a notebook's log).", "execution.log_every", min=0.01, **_NO_BATCH)]
    log_format: Annotated[LogFormat, Option("Progress lines as text, or json: one JSON object per line for log "
                                            "collectors (also on a terminal), the closing summary too.",
                                            "execution.log_format", **_NO_BATCH)]


#: The prompts: the argument of `cai run` and `cai batch submit`, the first positional of `cai.arun`.
INPUT = Option("Prompts: .jsonl (prompt or messages), .txt or .csv.", "io.input", path=True)
#: Settings fields that are no option (set by the code, not by a user).
NOT_OPTIONS = {"generation.top_logprobs": "set per call by the grader and the judge"}


@functools.cache
def declared() -> dict[str, tuple[Any, Option]]:
    """{name: (the type the library accepts, its Option)} in the order `cai run --help` lists them."""
    out: dict[str, tuple[Any, Option]] = {}
    for name, hint in RunOptions.__annotations__.items():
        kind, *extras = get_args(hint)
        out[name] = (kind, next(e for e in extras if isinstance(e, Option)))
    return out


def option(name: str) -> Option | None:
    """The declaration of the option (or `input`) `name`; None if there is none."""
    return INPUT if name == "input" else declared().get(name, (None, None))[1]


def needs_rbr(name: str) -> bool:
    """Whether the option `name` means something only with `rbr` (it sets a scoring field, or compares rewards)."""
    opt = option(name)
    return opt is not None and (opt.sets("scoring") or opt.needs_rbr)
