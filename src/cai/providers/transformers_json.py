"""Replies that follow a JSON schema, for `transformers:PATH`: the object's braces, commas and property names are
written into the reply for the model, and the model gives each value. A value from a closed set (a boolean, an
integer between a minimum and a maximum, a string `enum`) is the option the model finds likeliest (at temperature 0;
above, one sampled by its likelihood); a free string is the model's own text up to its closing quote, its
`maxLength` or the token budget. The reply is always one JSON object with every property, of the right types.

The schemas cai asks with are of this kind (the critic's verdict, the grader's joint propositions and response
type). `plan` returns None for any other schema: the provider then asks for it in the prompt alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cai.providers.transformers_gen import Decoder, piece

MAX_CHOICES = 101  # an integer property's range at most this long


@dataclass(frozen=True)
class Field:
    """One property: the values it may take, or None for a free string (of at most `max_chars` characters)."""

    name: str
    options: tuple[Any, ...] | None
    max_chars: int | None = None


def _field(name: str, p: Any) -> Field | None:
    if not isinstance(p, dict):
        return None
    lo, hi = p.get("minimum"), p.get("maximum")
    if isinstance(p.get("enum"), list) and p["enum"]:
        return Field(name, tuple(p["enum"]))
    if p.get("type") == "boolean":
        return Field(name, (True, False))
    if p.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo < MAX_CHOICES:
        return Field(name, tuple(range(lo, hi + 1)))
    if p.get("type") == "string":
        return Field(name, None, p["maxLength"] if isinstance(p.get("maxLength"), int) else None)
    return None


def plan(schema: Any) -> list[Field] | None:
    """The properties of a flat object schema this module can fill, in order; None for any other schema."""
    props = schema.get("properties") if isinstance(schema, dict) and schema.get("type") == "object" else None
    if not isinstance(props, dict) or not props:
        return None
    fields = [_field(name, p) for name, p in props.items()]
    return None if any(f is None for f in fields) else [f for f in fields if f is not None]


@dataclass
class Filled:
    """The object, the reply's tokens (written and sampled) and whether a string was cut by the token budget."""

    value: dict[str, Any]
    tokens: int
    cut: bool


@dataclass
class _Writer:
    """The reply so far: text written for the model is fed to it just before it next has to choose."""

    dec: Decoder
    tokenizer: Any
    stop: set[int]
    pending: str = ""
    fed: list[int] = field(default_factory=list)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def flush(self, last: bool = False) -> None:
        """Feed the pending text (`last`: only count it, nothing comes after)."""
        if self.pending:
            ids = self.ids(self.pending)
            if not last:
                self.dec.feed(ids)
            self.fed += ids
            self.pending = ""

    def choose(self, options: tuple[Any, ...]) -> Any:
        """The option the model picks (written after a space; fed with the text that follows it)."""
        self.flush()
        texts = [" " + json.dumps(o, ensure_ascii=False) for o in options]
        i = self.dec.choose([self.ids(t) for t in texts])
        self.pending = texts[i]
        return options[i]

    def string(self, budget: int, max_chars: int | None) -> tuple[str, bool]:
        """The model's string up to its closing quote (whose text before the quote is written for it), an
        end-of-reply token, `max_chars`, or the reply reaching `budget` tokens (then cut: True)."""
        self.flush()
        raw = ""
        for _ in range(max(0, budget - len(self.fed))):
            tok = self.dec.sample()
            if tok in self.stop:
                return _unescape(raw), False
            text = piece(self.tokenizer, self.fed, tok)
            end = _closing_quote(raw + text, len(raw))
            if end is not None:
                self.pending = (raw + text)[len(raw):end]
                return _unescape((raw + text)[:end]), False
            raw += text
            self.dec.feed([tok])
            self.fed.append(tok)
            if max_chars is not None and len(_unescape(raw)) >= max_chars:
                return _unescape(raw)[:max_chars], False
        return _unescape(raw), True


def _closing_quote(text: str, start: int) -> int | None:
    """The index of the first `"` at or after `start` that no backslash escapes."""
    for i in range(start, len(text)):
        if text[i] == '"':
            j = i
            while j > 0 and text[j - 1] == "\\":
                j -= 1
            if (i - j) % 2 == 0:
                return i
    return None


def _unescape(raw: str) -> str:
    """A JSON string's content as text (control characters allowed); as written where it is not valid JSON."""
    try:
        value = json.loads(f'"{raw}"', strict=False)
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def _head(i: int, f: Field) -> str:
    return ("{" if i == 0 else ", ") + json.dumps(f.name, ensure_ascii=False) + ":"


def fill(dec: Decoder, tokenizer: Any, stop: set[int], fields: list[Field], max_tokens: int) -> Filled:
    """The object the model gives for `fields`, its strings within `max_tokens` less what the rest needs."""
    w = _Writer(dec, tokenizer, stop)
    out: dict[str, Any] = {}
    cut = False
    for i, f in enumerate(fields):
        w.pending += _head(i, f)
        if f.options is not None:
            out[f.name] = w.choose(f.options)
            continue
        w.pending += ' "'
        rest = "".join(_head(1, g) + (" " + max((json.dumps(o) for o in g.options), key=len) if g.options else ' ""')
                       for g in fields[i + 1:])
        out[f.name], short = w.string(max_tokens - len(w.ids('"' + rest + "}")), f.max_chars)
        cut = cut or short
        w.pending += '"'
    w.pending += "}"
    w.flush(last=True)
    return Filled(out, len(w.fed), cut)
