"""Constitutions: YAML layers of objectives, rules (hard bounds), defaults (customizable) and principles to
critique and revise by; comparison principles for AI preference labels; rule-based-reward sections. Layers
stack platform → developer → user (`extends:`, or several files) into one merged `Constitution`."""

from cai.constitution.model import (
    CLASS_RANK,
    RBR_CLASSES,
    SECTIONS,
    CheckBound,
    CheckRef,
    ComparisonPrinciple,
    Constitution,
    Layer,
    LayerFile,
    Principle,
    PrincipleSpec,
    Proposition,
    RbrClass,
    ResponseType,
    Rule,
)
from cai.constitution.sampling import sample_comparison, sample_principles
from cai.constitution.source import builtin_names, content_sha256, resolve
from cai.constitution.stack import check, load

__all__ = ["CLASS_RANK", "RBR_CLASSES", "SECTIONS", "CheckBound", "CheckRef", "ComparisonPrinciple", "Constitution",
           "Layer", "LayerFile", "Principle", "PrincipleSpec", "Proposition", "RbrClass", "ResponseType", "Rule",
           "builtin_names", "check", "content_sha256", "load", "resolve", "sample_comparison", "sample_principles"]
