"""The constitution format: what a file (one layer) may hold, and the merged result of a stack of layers."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The sections of critique principles, in the order a merged constitution lists (and samples) them.
SECTIONS: tuple[str, ...] = ("objectives", "rules", "defaults", "principles")
# What an item of each section is called (its `kind` once merged); `principles` keep their own free `kind`.
KIND_OF = {"objectives": "objective", "rules": "rule", "defaults": "default"}
SECTION_OF = {k: s for s, k in KIND_OF.items()}


class PrincipleSpec(BaseModel):
    """A critique principle as written in a layer. A new id needs `critique` and `revision`; an entry for an id an
    earlier layer defined changes only the fields it gives (see docs/constitution.md)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    statement: str = Field("", description="The rule or default in one sentence, as the critic and reviser are "
                                           "shown it in the order of authority (default: the critique).")
    critique: str = Field("", description="The critic's question (required for a new id).")
    revision: str = Field("", description="The reviser's request (required for a new id).")
    tags: list[str] = []
    kind: str | None = Field(None, description="In `principles:`, `objective`, `rule` or `default` files the item "
                                               "in that section; any other value is a free label.")
    enabled: bool = Field(True, description="Defaults only: false switches the default off.")
    metadata: dict[str, Any] = {}


class ComparisonPrinciple(BaseModel):
    """A question a feedback model answers by picking one of two responses, (A) or (B)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    question: str = Field(min_length=1)  # e.g. "Which response is more honest and less likely to mislead?"
    tags: list[str] = []


# -- rule-based rewards ----------------------------------------------------------------------
# Classes a rule can assign, best first; `CLASS_RANK` orders them (higher is better).
RBR_CLASSES: tuple[str, ...] = ("ideal", "minimum_acceptable", "unacceptable")
CLASS_RANK: dict[str, int] = {c: len(RBR_CLASSES) - 1 - i for i, c in enumerate(RBR_CLASSES)}
RbrClass = Literal["ideal", "minimum_acceptable", "unacceptable"]


class Proposition(BaseModel):
    """A yes/no question about a (prompt, response) pair, asked of a grader model."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    question: str = Field(min_length=1)


class Rule(BaseModel):
    """If every proposition in `when` has the given truth value, the response gets `class`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: dict[str, bool] = Field(min_length=1)
    class_: RbrClass = Field(alias="class")


class CheckBound(BaseModel):
    """Bounds a deterministic check's score should stay within for one response type."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(None, ge=0.0, le=1.0)
    max: float | None = Field(None, ge=0.0, le=1.0)


class ResponseType(BaseModel):
    """How a prompt should be answered, and rules mapping proposition values to a class."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    rules: list[Rule] = []
    default: RbrClass = "unacceptable"
    checks: dict[str, CheckBound] = {}


class CheckRef(BaseModel):
    """A deterministic check (registered in `cai.scoring.checks`) to compute for every response."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""


class _RbrSections(BaseModel):
    # Rule-based rewards (optional sections).
    propositions: list[Proposition] = []
    response_types: dict[str, ResponseType] = {}
    checks: list[CheckRef] = []
    length_budget: int | None = Field(None, ge=1)  # words; the `verbosity` check divides by it
    # AI preference labels (optional section).
    comparisons: list[ComparisonPrinciple] = []


class LayerFile(_RbrSections):
    """One constitution file: a layer, alone or on top of the layers it `extends`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    extends: str | None = Field(None, description="A shipped name or a path (relative to this file) of the layer "
                                                  "this one goes on top of.")
    objectives: list[PrincipleSpec] = []
    rules: list[PrincipleSpec] = Field([], description="Hard bounds: no later layer may remove, switch off or "
                                                       "weaken them.")
    defaults: list[PrincipleSpec] = Field([], description="Customizable: a later layer may change or switch "
                                                          "them off.")
    principles: list[PrincipleSpec] = []
    remove: list[str] = Field([], description="Ids of an earlier layer's objectives, defaults or principles to "
                                              "drop (never a rule's).")


class Principle(BaseModel):
    """A merged critique principle: what the critic and reviser are asked, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    statement: str = ""
    tags: list[str] = []
    kind: str | None = None  # objective | rule | default, or a free label of a plain principle
    enabled: bool = True
    metadata: dict[str, Any] = {}
    layer: str = ""  # the name of the layer whose version is in effect (the last one to change it)
    defined_in: str = ""  # the layer that first defined it, when a later one changed it

    @property
    def section(self) -> str:
        return SECTION_OF.get(self.kind or "", "principles")

    def stated(self) -> str:
        return self.statement or self.critique


class Layer(BaseModel):
    """One file of a stack: its name, where it was read, and its content hash."""

    name: str
    path: str
    sha256: str


class Constitution(_RbrSections):
    """A merged stack of layers (a single file is a stack of one). `principles` holds every critique principle
    in order (objectives, rules, defaults, then plain principles); `origin` names the layer of every other item,
    as "section/id"."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    principles: list[Principle] = Field(min_length=1)
    layers: list[Layer] = []
    origin: dict[str, str] = {}
    sha256: str = ""  # one layer: its `content_sha256`; several: `stack_sha256` of their hashes
    path: str = ""  # the top layer's file

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def proposition(self, pid: str) -> Proposition:
        for p in self.propositions:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def comparison(self, cid: str) -> ComparisonPrinciple:
        for c in self.comparisons:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def section(self, name: str, enabled_only: bool = True) -> list[Principle]:
        """The principles of one section (`rules`, `defaults`, …), the switched-off defaults left out."""
        return [p for p in self.principles if p.section == name and (p.enabled or not enabled_only)]

    @property
    def active(self) -> list[Principle]:
        """The principles the loop samples from: all but switched-off defaults."""
        return [p for p in self.principles if p.enabled]

    @property
    def layered(self) -> bool:
        """Whether the chain of command applies: some rule or default is defined."""
        return any(p.kind in ("rule", "default") for p in self.principles)

    @property
    def comparisons_sha256(self) -> str:
        """sha256 of the canonical JSON of the comparison principles; "" when there are none."""
        if not self.comparisons:
            return ""
        blob = json.dumps([c.model_dump() for c in self.comparisons], sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def stack_sha256(layers: list[Layer]) -> str:
    """A stack's hash: one layer's own hash (so a run on one file keeps the fingerprint it always had), else the
    sha256 of every layer's `name:sha256`, bottom first."""
    if len(layers) == 1:
        return layers[0].sha256
    return hashlib.sha256("\n".join(f"{x.name}:{x.sha256}" for x in layers).encode()).hexdigest()
