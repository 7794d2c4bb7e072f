"""Layers stacked platform → developer → user: `extends` chains and repeated `--constitution`, merged into one
`Constitution`. A later layer may add anything and change or switch off defaults; it may not remove, switch off
or weaken an earlier layer's rule (docs/constitution.md says what "weaken" means, field by field)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.constitution.model import (
    KIND_OF,
    SECTION_OF,
    SECTIONS,
    CheckRef,
    ComparisonPrinciple,
    Constitution,
    Layer,
    Principle,
    PrincipleSpec,
    Proposition,
    ResponseType,
    stack_sha256,
)
from cai.constitution.source import SINGULAR, Source, read, resolve
from cai.errors import InputError
from cai.scoring.checks import CHECKS

# A later layer may restate a rule, add tags to it (the tags it gives are added) and change its metadata (which no
# model is shown); changing any of these fields, switching it off, moving it out of `rules` or removing it weakens it.
RULE_TEXT_FIELDS = ("statement", "critique", "revision")


def expand(specs: Sequence[str]) -> tuple[list[Source], list[InputError]]:
    """The files of a stack, bottom first: each spec's `extends` chain, then the spec itself. A file met twice
    (say `model-spec`, given and also extended by the next layer) is one layer, at its first place."""
    out: list[Source] = []
    seen: set[Path] = set()
    problems: list[InputError] = []

    def visit(spec: str, by: Source | None, chain: tuple[Path, ...]) -> None:
        try:
            path = resolve(spec, by.path.parent if by is not None else None)
        except InputError as e:
            problems.append(by.error(f"extends: {e}", "extends") if by is not None else e)
            return
        key = path.resolve()
        if key in chain:
            assert by is not None
            problems.append(by.error(f"extends: {spec!r} extends this file again (a cycle)", "extends"))
            return
        if key in seen:
            return
        src = read(path)
        problems.extend(src.problems)
        if src.layer is not None and src.layer.extends:
            visit(src.layer.extends, src, (*chain, key))
        if key not in seen:
            seen.add(key)
            out.append(src)

    for spec in specs:
        visit(spec, None, ())
    return out, problems


class _Merge:
    """The stack merged so far."""

    def __init__(self) -> None:
        self.items: dict[str, Principle] = {}
        self.comparisons: dict[str, ComparisonPrinciple] = {}
        self.propositions: dict[str, Proposition] = {}
        self.response_types: dict[str, ResponseType] = {}
        self.checks: dict[str, CheckRef] = {}
        self.length_budget: int | None = None
        self.description = ""
        self.origin: dict[str, str] = {}
        self.problems: list[InputError] = []

    def apply(self, src: Source) -> None:
        layer = src.layer
        assert layer is not None
        name = layer.name
        if layer.description:
            self.description = layer.description
        for j, rid in enumerate(layer.remove):
            prev = self.items.get(rid)
            if prev is None:
                self.problems.append(src.error(f"remove.{j}: no earlier layer defines {rid!r}", "remove", j))
            elif prev.kind == "rule":
                self.problems.append(src.error(_weakens(name, "remove", prev), "remove", j))
            else:
                del self.items[rid]
        here: dict[str, str] = {}
        for section in SECTIONS:
            for i, spec in enumerate(getattr(layer, section)):
                if spec.id in here and here[spec.id] != section:
                    self.problems.append(src.error(f"{section}.{i}: id {spec.id!r} is also in `{here[spec.id]}` "
                                                   "of this file", section, i, "id"))
                    continue
                here[spec.id] = section
                self._principle(src, section, i, spec)
        for c in layer.comparisons:
            self.comparisons[c.id] = c
            self.origin[f"comparisons/{c.id}"] = name
        for p in layer.propositions:
            self.propositions[p.id] = p
            self.origin[f"propositions/{p.id}"] = name
        for tname, rtype in layer.response_types.items():
            self.response_types[tname] = rtype
            self.origin[f"response_types/{tname}"] = name
        for ref in layer.checks:
            self.checks[ref.name] = ref
            self.origin[f"checks/{ref.name}"] = name
        if "length_budget" in layer.model_fields_set:
            self.length_budget = layer.length_budget

    def _principle(self, src: Source, section: str, i: int, spec: PrincipleSpec) -> None:
        name = src.layer.name if src.layer else ""
        target = SECTION_OF.get(spec.kind or "", section) if section == "principles" else section
        kind = KIND_OF.get(target, spec.kind)
        given = spec.model_fields_set - {"id", "kind"}
        prev = self.items.get(spec.id)
        if prev is not None and prev.kind == "rule":
            problem = _rule_change(prev, spec, target, given)
            if problem is not None:
                field, what = problem
                self.problems.append(src.error(f"{section}.{i}: {_weakens(name, what, prev)}", section, i, field))
                return
            tags = prev.tags + [t for t in spec.tags if t not in prev.tags]
            self.items[spec.id] = prev.model_copy(update={"tags": tags, "metadata": {**prev.metadata,
                                                                                     **spec.metadata}})
            return
        if "enabled" in given and not spec.enabled and target != "defaults":
            self.problems.append(src.error(f"{section}.{i}.enabled: only a default can be switched off",
                                           section, i, "enabled"))
            return
        if prev is None:
            for field in ("critique", "revision"):
                if not getattr(spec, field):
                    self.problems.append(src.error(f"{section}.{i}.{field}: Field required (a new "
                                                   f"{SINGULAR[section]} needs `critique` and `revision`)",
                                                   section, i, field))
                    return
            self.items[spec.id] = Principle(**spec.model_dump(exclude={"kind"}), kind=kind, layer=name)
            return
        update: dict[str, Any] = {f: getattr(spec, f) for f in given}
        if target == prev.section == "principles" and "kind" not in spec.model_fields_set:
            kind = prev.kind  # a plain principle keeps its free label
        self.items[spec.id] = prev.model_copy(update={**update, "kind": kind, "layer": name,
                                                      "defined_in": prev.defined_in or prev.layer})

    def rbr_problems(self, sources: dict[str, Source]) -> None:
        """Cross-references of the merged RBR sections: known propositions in rules, known and listed checks."""
        known = set(self.propositions)
        for tname, rtype in self.response_types.items():
            src = sources[self.origin[f"response_types/{tname}"]]
            for j, rule in enumerate(rtype.rules):
                self.problems += [src.error(f"response_types.{tname}.rules.{j}: unknown proposition {pid!r}",
                                            "response_types", tname, "rules", j, "when", pid)
                                  for pid in rule.when if pid not in known]
            self.problems += [src.error(f"response_types.{tname}.checks: check {cname!r} is not in `checks`",
                                        "response_types", tname, "checks", cname)
                              for cname in rtype.checks if cname not in self.checks]
        for cname, ref in self.checks.items():
            if ref.name not in CHECKS:
                src = sources[self.origin[f"checks/{cname}"]]
                k = next(k for k, r in enumerate(src.layer.checks if src.layer else []) if r.name == cname)
                self.problems.append(src.error(f"checks.{k}: unknown check {ref.name!r} (known: "
                                               f"{', '.join(sorted(CHECKS))})", "checks", k, "name"))


def _rule_change(prev: Principle, spec: PrincipleSpec, target: str, given: set[str]) -> tuple[str, str] | None:
    """(the field, what the entry does) if an entry for an earlier layer's rule weakens it; None if it only
    restates it, adds tags or changes its metadata."""
    if target != "rules":
        return "id", f"turn into {'an' if target[0] in 'aeiou' else 'a'} {SINGULAR[target]}"
    if "enabled" in given and not spec.enabled:
        return "enabled", "switch off"
    for field in RULE_TEXT_FIELDS:
        if field in given and getattr(spec, field) != getattr(prev, field):
            return field, f"change the {field} of"
    return None


def _weakens(layer: str, what: str, prev: Principle) -> str:
    return (f"layer {layer!r} may not {what} rule {prev.id!r} of layer {prev.layer!r}: rules are hard bounds "
            "(add a new rule instead; see 'Weakening a rule' in docs/constitution.md)")


def check(specs: str | Sequence[str]) -> tuple[Constitution | None, list[InputError]]:
    """The merged constitution of a stack (one name or path, or several, bottom first) and every problem of
    every file in it, each an InputError naming the file and line (None when the stack cannot be merged)."""
    sources, problems = expand([specs] if isinstance(specs, str) else list(specs))
    if not sources:
        return None, problems or [InputError("no constitution given")]
    merge = _Merge()
    merge.problems = problems
    by_name: dict[str, Source] = {}
    for src in sources:
        if src.layer is None:  # past saving: its own problems are all there is to say
            return None, merge.problems
        if src.layer.name in by_name:
            merge.problems.append(src.error(f"name: layer name {src.layer.name!r} is also the name of "
                                            f"{by_name[src.layer.name].path}; layers need distinct names", "name"))
            continue
        by_name[src.layer.name] = src
        merge.apply(src)
    merge.rbr_problems(by_name)
    top = sources[-1]
    if not merge.problems and not any(p.enabled for p in merge.items.values()):
        merge.problems.append(top.error("principles: the constitution has no principle, objective, rule or "
                                        "enabled default to critique by", "principles"))
    if merge.problems:
        return None, merge.problems
    layers = [Layer(name=s.layer.name, path=str(s.path), sha256=s.sha256) for s in sources if s.layer]
    const = Constitution(
        name="+".join(x.name for x in layers), description=merge.description,
        principles=list(merge.items.values()), layers=layers, origin=merge.origin, sha256=stack_sha256(layers),
        path=str(top.path), propositions=list(merge.propositions.values()), response_types=merge.response_types,
        checks=list(merge.checks.values()), length_budget=merge.length_budget,
        comparisons=list(merge.comparisons.values()))
    return const, []


def load(specs: str | Sequence[str]) -> Constitution:
    """The merged constitution of a stack; InputError naming the file and line of its first problem."""
    const, problems = check(specs)
    if problems or const is None:
        raise problems[0]
    return const
