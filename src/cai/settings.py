"""`RunSettings`: everything a run was asked to do, one typed model per concern, built once.

    RunSettings.from_options(input="in.jsonl", out="runs/x", rounds=1, max_tokens=64)   # cai.options.RunOptions
    settings.loop.rounds, settings.generation.max_tokens, settings.models.specs()

Fields that change what the models produce are marked OUTPUT (and `generation` contributes its
`output_fields()`): the resume fingerprint is derived from them by `cai.calls.output_settings`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from cai.calls import OUTPUT, GenConfig
from cai.errors import InputError
from cai.options import (
    CandidatesFrom,
    Engine,
    Format,
    GraderMode,
    LogFormat,
    Option,
    QualityGate,
    RankBy,
    Requantize,
    ReviewMode,
    ReviewPolicy,
    declared,
    needs_rbr,
    option,
)
from cai.prompts import fewshot, fewshot_path

ROLES = ("generator", "critic", "reviser")
# export settings a resumed run keeps unless the caller gives them (`RunSettings.resumed`)
KEPT_ON_RESUME = ("format", "quality_gate", "system_role_for_developer", "min_reward_margin", "reviews",
                  "review_policy")
M = TypeVar("M", bound=BaseModel)


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IOSettings(_Part):
    """Where prompts come from and where the run folder is."""

    input: str
    out: str
    limit: int | None = Field(None, ge=1)  # only the first N prompts


class ModelSettings(_Part):
    """The model of each role (`local`, `local:PATH.gguf`, `openai:NAME`, `anthropic:NAME`)."""

    generator: str = "local"
    critic: str = "local"
    reviser: str = "local"
    base_url: str | None = None
    # What a local model loads: `auto` (the shipped GGUF requantized to Q8_0, a file of your own as it is), `q8_0`,
    # `q4_0` or `off`; None leaves the process's setting (CAI_LOCAL_REQUANTIZE, else auto;
    # cai.providers.local_weights). Not fingerprinted as such: the models' identities are the loaded weights' hashes.
    local_requantize: Requantize | None = None

    def specs(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES}


class LoopSettings(_Part):
    """The critique loop: which constitution, how many critique → revise rounds, how many worked examples
    (prompts/fewshot.yaml, default all) the critic's and the reviser's prompts show."""

    # A shipped name or a YAML path; several are layers, bottom (platform) first. One is kept as a plain string.
    constitution: str | tuple[str, ...] = "default"
    rounds: Annotated[int, OUTPUT] = Field(2, ge=0)
    stop_when_clean: Annotated[bool, OUTPUT] = False
    fewshot: Annotated[int, OUTPUT] = Field(default_factory=lambda: len(fewshot()), ge=0)
    # Candidates for AI preference labels: `candidates` sampled responses (the draft and K-1 more, seeds
    # seed+1..), and/or the draft with its revisions. Two or more turn labeling on (`RunSettings.labels`).
    candidates: Annotated[int, OUTPUT] = Field(1, ge=1)
    candidates_from: Annotated[CandidatesFrom, OUTPUT] = "samples"

    @field_validator("constitution", mode="before")
    @classmethod
    def _one_or_layers(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError("give at least one constitution")
            return v[0] if len(v) == 1 else tuple(v)
        return v

    def layers(self) -> list[str]:
        """The constitution's layers as given, bottom first."""
        return [self.constitution] if isinstance(self.constitution, str) else list(self.constitution)

    def labeling(self) -> bool:
        """Whether the loop makes two or more candidates per prompt."""
        return (self.candidates >= 2 and "samples" in self.candidates_from) or (
            "revisions" in self.candidates_from and self.rounds >= 1)


class ExecutionSettings(_Part):
    """How calls are made; none of it changes an output, so a run resumes under other values."""

    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    retry_failed: bool = False
    prices: str | None = None  # price table for the cost estimate, over the built-in prices (cai.core.prices)
    # A budget in USD over all invocations of the run: a call whose worst case would cross it is not sent.
    max_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    cache: str | None = None  # a call cache shared by runs (cai.store.callcache); off by default
    # Where the pipeline runs: in this process, or sharded to Ray actors (the `cai.cluster` plugin, `ray` extra).
    engine: Engine = "local"
    ray_address: str | None = None  # None: start (or join) a local Ray instance; "auto" or HOST:PORT: a cluster
    workers: int | None = Field(None, ge=1)  # Ray worker actors (default: the cluster's CPUs, at most 8)
    # Sequences the embedded (`local`) model decodes together: 1 is the single-sequence path; None leaves the
    # process's setting (CAI_LOCAL_SLOTS, else 1; cai.providers.local_slots). Ray workers read CAI_LOCAL_SLOTS.
    local_slots: int | None = Field(None, ge=1, le=64)
    # Progress lines when stderr is not a terminal: every `log_every` s, as text or JSON. Not stored (excluded from
    # the run's settings and manifest): how one invocation reports, not what the run is.
    log_every: float = Field(30.0, gt=0, exclude=True)
    log_format: LogFormat = Field("text", exclude=True)


class ScoringSettings(_Part):
    """Rule-based rewards: grade the draft and each revision, steer the reviser, reward the pairs."""

    scorer: str = "rbr"  # a `scorer.NAME` plugin (cai.plugins)
    grader: str | None = None  # model spec; default: the critic's
    constitution: str | None = None  # default: the run's if it has propositions, else rbr-safety
    mode: GraderMode = "separate"
    votes: int = Field(3, ge=1)
    weights: str | None = None
    feedback: bool = True


class LabelSettings(_Part):
    """AI preference labels: a judge compares every pair of a prompt's candidates in both orders under a
    comparison principle of the constitution; candidates are ranked and pairs kept above `min_margin`."""

    labeler: str = "ai"  # a `labeler.NAME` plugin (cai.plugins)
    judge: str | None = None  # model spec; default: the critic's
    cot: bool = False  # reason first, then answer (soft labels clamped to [0.4, 0.6])
    votes: int = Field(3, ge=1)  # sampled answers per order when the judge has no logprobs
    min_margin: float = Field(0.0, ge=0.0, le=0.5)  # P(chosen ≻ rejected) - 0.5 a pair must exceed
    rank_by: RankBy = "judge"


class ExportSettings(_Part):
    """What the exports look like."""

    format: Format = "jsonl"
    system_role_for_developer: bool = False  # write `developer` turns as `system` in sft and pairs
    min_reward_margin: float | None = None  # with scoring: drop pairs whose reward improved by less
    quality_gate: QualityGate = "default"  # which quality flags keep a row out of pairs and sft
    reviews: ReviewMode = "apply"  # people's review decisions: apply them, keep only decided pairs, or ignore them
    review_policy: ReviewPolicy = "majority"  # which decision wins where reviewers differ


class RunSettings(_Part):
    """Everything `cai run` was asked to do (see the module docstring)."""

    io: IOSettings
    models: ModelSettings = ModelSettings()
    generation: GenConfig = GenConfig()
    loop: LoopSettings = LoopSettings()
    execution: ExecutionSettings = ExecutionSettings()
    scoring: ScoringSettings | None = None
    labels: LabelSettings | None = None
    export: ExportSettings = ExportSettings()

    @classmethod
    def from_options(cls, **options: Any) -> RunSettings:
        """Build from the options of `cai run` / `cai.arun` (`cai.options.RunOptions`; `input` too). An option
        not given (or None) takes its field's default; `model` sets every role not given; `rbr=True` turns
        scoring on; two or more candidates turn labeling on. An option of a part that stays off, an unknown
        option or a bad value is an InputError naming the option as the caller gave it."""
        given = {k: v for k, v in options.items() if v is not None}
        rbr = bool(given.get("rbr"))
        parts: dict[str, dict[str, Any]] = {name: {} for name in cls.model_fields}
        # shorthands first, so that an option of the field's own wins
        for name, opt in sorted(_declarations(given).items(), key=lambda item: not item[1].shorthand):
            for target in opt.targets:
                part, field = target.split(".")
                parts[part][field] = str(given[name]) if opt.path else given[name]
        scoring, labels = parts.pop("scoring"), parts.pop("labels")
        loop = _validated(LoopSettings, "loop", parts["loop"])
        _check_parts_on(given, rbr, loop)
        settings = cls(**{p: _validated(_PARTS[p], p, v) for p, v in parts.items()},  # type: ignore[arg-type]
                       scoring=_validated(ScoringSettings, "scoring", scoring) if rbr else None,
                       labels=_validated(LabelSettings, "labels", labels) if loop.labeling() else None)
        if settings.loop.fewshot > len(fewshot()):
            raise InputError(f"run option fewshot is {settings.loop.fewshot}, but this file has only "
                             f"{len(fewshot())} worked examples", path=str(fewshot_path()))
        if settings.labels is not None and "rbr" in settings.labels.rank_by and settings.scoring is None:
            raise InputError(f"rank_by {settings.labels.rank_by} needs rule-based rewards (--rbr)")
        return settings

    def resumed(self, stored: dict[str, Any] | None) -> RunSettings:
        """These settings for a run that stored `stored` (meta `settings`; None on a new run): each export field of
        KEPT_ON_RESUME the caller did not give is the run's own, so a plain re-run keeps the files the run was
        started with; so is the budget (`max_cost`), so a plain re-run never spends past it."""
        kept = [f for f in KEPT_ON_RESUME if f not in self.export.model_fields_set]
        if stored is None:
            return self
        was = RunSettings.from_stored(stored)
        out = self
        if kept:
            out = out.model_copy(update={"export": self.export.model_copy(
                update={f: getattr(was.export, f) for f in kept})})
        if "max_cost" not in self.execution.model_fields_set and was.execution.max_cost is not None:
            out = out.model_copy(update={"execution": out.execution.model_copy(
                update={"max_cost": was.execution.max_cost})})
        return out

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> RunSettings:
        """The settings a run stored (meta `settings`); runs from before the nesting stored them flat."""
        if "io" in data:
            return cls.model_validate(data)
        rbr = bool(data.get("rbr"))
        flat = {k: v for k, v in data.items() if k not in ("gen", "rbr") and (rbr or not needs_rbr(k))}
        flat.update(data.get("gen") or {})
        return cls.from_options(**flat, rbr=rbr)


# {part: its settings model}, read from RunSettings (`scoring: ScoringSettings | None` too)
_PARTS: dict[str, type[BaseModel]] = {
    name: next(t for t in (info.annotation, *get_args(info.annotation)) if isinstance(t, type)
               and issubclass(t, BaseModel)) for name, info in RunSettings.model_fields.items()}


def option_field(target: str) -> FieldInfo:
    """The settings field an option sets ("loop.rounds"): its type, default and bounds."""
    part, field = target.split(".")
    return _PARTS[part].model_fields[field]


def _option_name(target: str) -> str:
    """The option that sets the field `target` ("scoring.mode"; not a shorthand): the name the caller knows."""
    return next((name for name, opt in _declarations(dict.fromkeys(("input", *declared()))).items()
                 if target in opt.targets and not opt.shorthand), target.split(".")[-1])


def _declarations(names: dict[str, Any]) -> dict[str, Option]:
    """{name: its declaration} for the options `names`; an InputError for the first unknown one."""
    out = {name: option(name) for name in names}
    if unknown := [name for name, opt in out.items() if opt is None]:
        raise InputError(f"unknown run option {unknown[0]!r}")
    return out  # type: ignore[return-value]


def _validated(model: type[M], part: str, values: dict[str, Any]) -> M:
    try:
        return model(**values)
    except ValidationError as e:
        first = e.errors()[0]
        name = _option_name(f"{part}.{first['loc'][0]}")
        raise InputError(f"run option {name}: {first['msg']}") from None


def _check_parts_on(given: dict[str, Any], rbr: bool, loop: LoopSettings) -> None:
    """Refuse an option of a part that is off, naming only options the caller gave."""
    scoring = {n for n in given if needs_rbr(n)}
    labels = {n for n in given if (opt := option(n)) and opt.sets("labels")}
    if not rbr and (unused := scoring - (labels if loop.labeling() else set())):
        raise InputError(f"{', '.join(sorted(unused))}: rule-based reward options need rbr=True (--rbr)")
    if not loop.labeling() and "revisions" in loop.candidates_from:
        raise InputError(f"candidates_from {loop.candidates_from} needs rounds ≥ 1: with rounds {loop.rounds} "
                         "the draft has no revisions to judge")
    if not loop.labeling() and (unused := labels - (scoring if rbr else set())):
        raise InputError(f"{', '.join(sorted(unused))}: labeling options need two or more candidates "
                         "(--candidates K, or --candidates-from revisions)")
