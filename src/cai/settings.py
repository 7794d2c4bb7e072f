"""`RunSettings`: everything a run was asked to do, one typed model per concern, built once.

    RunSettings.from_options(input="in.jsonl", out="runs/x", rounds=1, max_tokens=64)   # CLI / API options
    settings.loop.rounds, settings.generation.max_tokens, settings.models.specs()

Fields that change what the models produce are marked OUTPUT (and `generation` contributes its
`output_fields()`): the resume fingerprint is derived from them by `cai.config.output_settings`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai.config import OUTPUT, GenConfig
from cai.errors import InputError
from cai.prompts import fewshot, fewshot_path

ROLES = ("generator", "critic", "reviser")


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
    local_requantize: Literal["auto", "q8_0", "q4_0", "off"] | None = None

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
    candidates_from: Annotated[Literal["samples", "revisions", "samples+revisions"], OUTPUT] = "samples"

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
    prices: str | None = None  # price table for the cost estimate (default: shipped)
    cache: str | None = None  # a call cache shared by runs (cai.callcache); off by default
    # Where the pipeline runs: in this process, or sharded to Ray actors (the `cai.cluster` plugin, `ray` extra).
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start (or join) a local Ray instance; "auto" or HOST:PORT: a cluster
    workers: int | None = Field(None, ge=1)  # Ray worker actors (default: the cluster's CPUs, at most 8)
    # Sequences the embedded (`local`) model decodes together: 1 is the single-sequence path; None leaves the
    # process's setting (CAI_LOCAL_SLOTS, else 1; cai.providers.local_slots). Ray workers read CAI_LOCAL_SLOTS.
    local_slots: int | None = Field(None, ge=1, le=64)


class ScoringSettings(_Part):
    """Rule-based rewards: grade the draft and each revision, steer the reviser, reward the pairs."""

    scorer: str = "rbr"  # a name registered with cai.scoring
    grader: str | None = None  # model spec; default: the critic's
    constitution: str | None = None  # default: the run's if it has propositions, else rbr-safety
    mode: Literal["separate", "joint"] = "separate"
    votes: int = Field(3, ge=1)
    weights: str | None = None
    feedback: bool = True


class LabelSettings(_Part):
    """AI preference labels: a judge compares every pair of a prompt's candidates in both orders under a
    comparison principle of the constitution; candidates are ranked and pairs kept above `min_margin`."""

    labeler: str = "ai"  # a name registered with cai.scoring.register_labeler
    judge: str | None = None  # model spec; default: the critic's
    cot: bool = False  # reason first, then answer (soft labels clamped to [0.4, 0.6])
    votes: int = Field(3, ge=1)  # sampled answers per order when the judge has no logprobs
    min_margin: float = Field(0.0, ge=0.0, le=0.5)  # P(chosen ≻ rejected) - 0.5 a pair must exceed
    rank_by: Literal["judge", "rbr", "judge+rbr"] = "judge"


class ExportSettings(_Part):
    """What the exports look like."""

    format: Literal["jsonl", "parquet"] = "jsonl"
    system_role_for_developer: bool = False  # write `developer` turns as `system` in sft and pairs
    min_reward_margin: float | None = None  # with scoring: drop pairs whose reward improved by less


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
        """Build from the flat options of `cai run` / `cai.arun` (`model` sets every role not given;
        `rbr=True` turns scoring on, with `grader`, `rbr_constitution`, `grader_mode`, `votes`, `weights`,
        `rbr_feedback`; two or more candidates turn labeling on, with `judge`, `cot`, `votes`, `min_margin`,
        `rank_by`). An unknown option is an InputError naming it."""
        opts = {k: v for k, v in options.items() if v is not None}
        model = opts.pop("model", "local")
        rbr = opts.pop("rbr", False)
        renamed = {"rbr_constitution": "constitution", "grader_mode": "mode", "rbr_feedback": "feedback"}
        parts: dict[str, dict[str, Any]] = {name: {} for name in cls.model_fields}
        parts["models"] = {role: opts.pop(role, model) for role in ROLES}
        for name, value in opts.items():
            field = renamed.get(name, name)
            targets = [p for p, names in _SHARED_OPTIONS.items() if name in names] or [next(
                (p for p, fields in _PART_FIELDS.items() if field in fields), "")]
            if not targets[0]:
                raise InputError(f"unknown run option {name!r}")
            for target in targets:
                parts[target][field] = str(value) if name in _PATHS else value
        scoring, labels = parts.pop("scoring"), parts.pop("labels")
        try:
            loop = LoopSettings(**parts["loop"])
            needs_rbr = set(scoring) | ({"min_reward_margin"} & set(parts["export"]))  # the margin compares rewards
            if not rbr and (unused := needs_rbr - (set(labels) if loop.labeling() else set())):
                raise InputError(f"{', '.join(sorted(unused))}: rule-based reward options need rbr=True (--rbr)")
            if not loop.labeling() and (unused := set(labels) - (set(scoring) if rbr else set())):
                raise InputError(f"{', '.join(sorted(unused))}: labeling options need two or more candidates "
                                 "(--candidates K, or --candidates-from revisions)")
            settings = cls(**parts, scoring=ScoringSettings(**scoring) if rbr else None,  # type: ignore[arg-type]
                           labels=LabelSettings(**labels) if loop.labeling() else None)
        except ValidationError as e:
            first = e.errors()[0]
            raise InputError(f"run option {first['loc'][-1]}: {first['msg']}") from None
        if settings.loop.fewshot > len(fewshot()):
            raise InputError(f"run option fewshot is {settings.loop.fewshot}, but this file has only "
                             f"{len(fewshot())} worked examples", path=str(fewshot_path()))
        if settings.labels is not None and "rbr" in settings.labels.rank_by and settings.scoring is None:
            raise InputError(f"rank_by {settings.labels.rank_by} needs rule-based rewards (--rbr)")
        return settings

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> RunSettings:
        """The settings a run stored (meta `settings`); runs from before the nesting stored them flat."""
        if "io" in data:
            return cls.model_validate(data)
        rbr = bool(data.get("rbr"))
        flat = {k: v for k, v in data.items() if k not in ("gen", "rbr")
                and (rbr or k not in (*_SCORING_OPTIONS, "min_reward_margin"))}
        flat.update(data.get("gen") or {})
        return cls.from_options(**flat, rbr=rbr)


_PART_FIELDS: dict[str, set[str]] = {
    "io": set(IOSettings.model_fields), "models": {"base_url", "local_requantize"},
    "generation": set(GenConfig.model_fields),
    "loop": set(LoopSettings.model_fields), "execution": set(ExecutionSettings.model_fields),
    "export": set(ExportSettings.model_fields)}
_SCORING_OPTIONS = {"grader", "rbr_constitution", "grader_mode", "votes", "weights", "rbr_feedback"}
_LABEL_OPTIONS = {"judge", "cot", "votes", "min_margin", "rank_by"}
# options that belong to a part only when it is on (`votes` serves both the grader and the judge)
_SHARED_OPTIONS = {"scoring": _SCORING_OPTIONS, "labels": _LABEL_OPTIONS}
_PATHS = {"input", "out", "prices", "cache", "weights"}
