"""`anthropic:<model>`: the anthropic SDK (Messages API); schemas are enforced with a forced tool.

Prompt caching: the static prefix of a request (`Request.static_prefix` leading messages, e.g. the critic's
instructions and few-shot turns) is marked with `cache_control: {"type": "ephemeral"}` (Anthropic's 5-minute
cache) when it reaches the model's minimum cacheable length, so later records read it from the cache. The
marker changes only how the same text is sent (a string becomes text blocks), never the text or the cache key.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import json
import os
from typing import Any

import anthropic

from cai.calls import Completion, Request
from cai.errors import AuthError
from cai.providers.base import Model, sdk_error

# Anthropic's documented minimum cacheable prompt length in tokens per model family (fnmatch over the model
# name, first match wins), from https://platform.claude.com/docs/en/docs/build-with-claude/prompt-caching as
# quoted in anthropics/anthropic-sdk-python#1194, checked 2026-11-24. Where sources disagree (Sonnet 4.6:
# 1024 documented, 2048 observed and listed by gateways) the larger is used, since a marker on a shorter
# prefix is ignored by the server. A model not listed gets CACHE_MIN_DEFAULT, the largest known minimum.
CACHE_MIN_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5*", 4096), ("claude-opus-4-6*", 4096), ("claude-haiku-4-5*", 4096),
    ("claude-sonnet-4-6*", 2048), ("claude-3-5-haiku*", 2048), ("claude-3-haiku*", 2048),
    ("claude-sonnet-4*", 1024), ("claude-opus-4-0*", 1024), ("claude-opus-4-1*", 1024),
    ("claude-opus-4-2025*", 1024), ("claude-3-7-sonnet*", 1024), ("claude-3-5-sonnet*", 1024),
    ("claude-3-opus*", 1024))
CACHE_MIN_DEFAULT = 4096
# Tokens are estimated as characters / 4 (English prose runs nearer 3.5 characters per Claude token): the
# estimate errs low, so a prefix is marked only once it is safely past the minimum.
CHARS_PER_TOKEN = 4
EPHEMERAL = {"type": "ephemeral"}


def min_cacheable_tokens(model: str) -> int:
    return next((n for pattern, n in CACHE_MIN_TOKENS if fnmatch.fnmatchcase(model, pattern)), CACHE_MIN_DEFAULT)


def mark_static_prefix(kwargs: dict[str, Any], messages: tuple[dict[str, str], ...], static: int, model: str) -> None:
    """Put `cache_control` on the last block of the first `static` messages of the request in `kwargs` (system
    text, or the last static turn) if they, with the tools, reach `model`'s minimum cacheable length. Nothing
    is marked when nothing follows the prefix, or when system text follows it (it would change the system
    prompt, which Anthropic caches before the messages)."""
    head, tail = messages[:static], messages[static:]
    if not head or not tail or any(m["role"] in ("system", "developer") for m in tail):
        return
    system, head_turns = split_system(head)
    chars = len(system) + sum(len(t["content"]) for t in head_turns) + len(json.dumps(kwargs.get("tools", [])))
    if chars // CHARS_PER_TOKEN < min_cacheable_tokens(model):
        return
    if not head_turns:
        if system:
            kwargs["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
        return
    turns, i, last = kwargs["messages"], len(head_turns) - 1, head_turns[-1]
    if turns[i]["role"] != last["role"] or not turns[i]["content"].startswith(last["content"]):
        return
    rest = turns[i]["content"][len(last["content"]):]  # the first live turn, if it was merged into this one
    cut = len(rest) - len(rest.lstrip("\n"))  # the merge's separator stays in the cached block
    blocks: list[dict[str, Any]] = [{"type": "text", "text": last["content"] + rest[:cut], "cache_control": EPHEMERAL}]
    if rest[cut:]:
        blocks.append({"type": "text", "text": rest[cut:]})
    turns[i] = {"role": turns[i]["role"], "content": blocks}


def split_system(messages: tuple[dict[str, str], ...]) -> tuple[str, list[dict[str, str]]]:
    """System/developer turns go to `system`; consecutive same-role turns are merged."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    turns: list[dict[str, str]] = []
    for m in messages:
        if m["role"] in ("system", "developer"):
            continue
        if turns and turns[-1]["role"] == m["role"]:
            turns[-1] = {"role": m["role"], "content": turns[-1]["content"] + "\n\n" + m["content"]}
        else:
            turns.append({"role": m["role"], "content": m["content"]})
    return "\n\n".join(system), turns


@functools.cache
def _takes_temperature() -> bool:
    """Newer anthropic SDKs (2.x) dropped sampling parameters from `messages.create`."""
    from anthropic.resources.messages import AsyncMessages

    return "temperature" in inspect.signature(AsyncMessages.create).parameters


class AnthropicModel(Model):
    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"
    base_url_env = "ANTHROPIC_BASE_URL"

    def __init__(self, name: str, base_url: str | None = None) -> None:
        super().__init__(name, base_url)
        self._client: anthropic.AsyncAnthropic | None = None

    def check(self) -> None:
        self._get_client()

    def client(self) -> Any:
        """The SDK's async client (made on first use), e.g. for the batch API."""
        return self._get_client()

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            key = os.environ.get("ANTHROPIC_API_KEY")
            if not key:
                raise AuthError("ANTHROPIC_API_KEY is not set", provider=self.provider, model=self.name)
            url, query = self.sdk_url()
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=url, default_query=query, max_retries=0)
        return self._client

    def params(self, request: Request) -> dict[str, Any]:
        """The Messages API parameters for `request` (without the timeout): what `complete` sends and what a
        message batch request carries."""
        cfg = request.config
        system, turns = split_system(request.messages)
        kwargs: dict[str, Any] = {"model": self.name, "max_tokens": cfg.max_tokens, "messages": turns}
        if _takes_temperature():
            kwargs["temperature"] = min(cfg.temperature, 1.0)
        if system:
            kwargs["system"] = system
        if request.schema is not None:
            kwargs["tools"] = [{"name": request.schema_name, "description": "Record your answer.",
                                "input_schema": request.schema}]
            kwargs["tool_choice"] = {"type": "tool", "name": request.schema_name}
        if request.static_prefix:
            mark_static_prefix(kwargs, request.messages, request.static_prefix, self.name)
        return kwargs

    async def complete(self, request: Request) -> Completion:
        where = self.where
        try:
            resp = await self._get_client().messages.create(**self.params(request), timeout=request.config.timeout)
        except (anthropic.APIError, ValueError) as e:  # HTTP errors, timeouts, connections, bad bodies
            raise sdk_error(e, anthropic, where, provider=self.provider, model=self.name) from e
        return completion(resp)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def completion(resp: Any) -> Completion:
    """A Messages API `Message` as a Completion: a forced tool's input as JSON text (`structured="tool"`), else
    the text blocks; cache reads and writes counted into tokens_in, as their parts."""
    text_parts: list[str] = []
    structured = None
    for block in resp.content or []:
        if block.type == "tool_use":
            text_parts = [json.dumps(block.input, ensure_ascii=False)]
            structured = "tool"
            break
        if block.type == "text":
            text_parts.append(block.text)
    usage = resp.usage  # input_tokens excludes the prompt tokens read from or written to the cache
    cached = getattr(usage, "cache_read_input_tokens", None) or 0
    written = getattr(usage, "cache_creation_input_tokens", None) or 0
    return Completion(text="".join(text_parts), tokens_in=usage.input_tokens + cached + written,
                      tokens_out=usage.output_tokens, tokens_cached=cached, tokens_cache_write=written,
                      finish_reason=resp.stop_reason, structured=structured)
