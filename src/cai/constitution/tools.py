"""Tools over constitution files: the JSON Schema of the format, and the difference of two constitutions."""

from __future__ import annotations

import json
from typing import Any

from cai.constitution import SECTIONS, Constitution, LayerFile

# The sections whose items carry an `id` (compared item by item); the others are compared as a whole. A critique
# principle is in the section of its kind (objectives, rules, defaults, principles), so one that moves between
# sections shows as removed from one and added to the other.
ID_SECTIONS = (*SECTIONS, "comparisons", "propositions")
WHOLE_SECTIONS = ("description", "response_types", "checks", "length_budget")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a constitution file, one layer (what `cai.constitution.load` reads)."""
    schema = LayerFile.model_json_schema(by_alias=True)
    schema["title"] = "cai constitution"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _items(const: Constitution, section: str) -> dict[str, dict[str, Any]]:
    items = const.section(section, enabled_only=False) if section in SECTIONS else getattr(const, section)
    return {item.id: item.model_dump(by_alias=True, exclude_defaults=True) for item in items}


def diff(a: Constitution, b: Constitution) -> dict[str, Any]:
    """What changes from `a` to `b`: per id section, the ids added, removed, and changed (with the fields that
    differ, old and new); and the other sections that differ as a whole."""
    out: dict[str, Any] = {"from": a.path or a.name, "to": b.path or b.name}
    for section in ID_SECTIONS:
        old, new = _items(a, section), _items(b, section)
        changed = {}
        for pid in old.keys() & new.keys():
            fields = {k: {"from": old[pid].get(k), "to": new[pid].get(k)}
                      for k in sorted(old[pid].keys() | new[pid].keys()) if old[pid].get(k) != new[pid].get(k)}
            if fields:
                changed[pid] = fields
        entry = {"added": sorted(new.keys() - old.keys()), "removed": sorted(old.keys() - new.keys()),
                 "changed": dict(sorted(changed.items()))}
        if any(entry.values()):
            out[section] = entry
    whole = [s for s in WHOLE_SECTIONS if json.dumps(getattr(a, s), default=str, sort_keys=True)
             != json.dumps(getattr(b, s), default=str, sort_keys=True)]
    if whole:
        out["other_sections_changed"] = whole
    return out


def diff_lines(d: dict[str, Any]) -> list[str]:
    """`diff`'s result as lines for a person: `+ section id`, `- section id`, `~ section id: field`."""
    lines = [f"--- {d['from']}", f"+++ {d['to']}"]
    for section in ID_SECTIONS:
        entry = d.get(section)
        if not entry:
            continue
        lines += [f"+ {section} {pid}" for pid in entry["added"]]
        lines += [f"- {section} {pid}" for pid in entry["removed"]]
        lines += [f"~ {section} {pid}: {', '.join(fields)}" for pid, fields in entry["changed"].items()]
    if d.get("other_sections_changed"):
        lines.append(f"~ {', '.join(d['other_sections_changed'])}")
    if len(lines) == 2:
        lines.append("(no differences)")
    return lines
