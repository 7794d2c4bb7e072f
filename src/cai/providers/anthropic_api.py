"""`anthropic:<model>`: the anthropic SDK (Messages API); schemas are enforced with a forced tool."""

from __future__ import annotations

import functools
import inspect
import json
import os
from typing import Any

import anthropic

from cai.config import Completion, Request
from cai.errors import AuthError
from cai.providers.base import Model, register, sdk_error


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


@register("anthropic")
class AnthropicModel(Model):
    default_base_url = "https://api.anthropic.com"

    def __init__(self, name: str, base_url: str | None = None) -> None:
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        super().__init__(name, base_url)
        self._client: anthropic.AsyncAnthropic | None = None

    def check(self) -> None:
        self._get_client()

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            key = os.environ.get("ANTHROPIC_API_KEY")
            if not key:
                raise AuthError("ANTHROPIC_API_KEY is not set", provider=self.provider, model=self.name)
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=self.base_url, max_retries=0)
        return self._client

    async def complete(self, request: Request) -> Completion:
        cfg = request.config
        system, turns = split_system(request.messages)
        kwargs: dict[str, Any] = {"model": self.name, "max_tokens": cfg.max_tokens, "messages": turns,
                                  "timeout": cfg.timeout}
        if _takes_temperature():
            kwargs["temperature"] = min(cfg.temperature, 1.0)
        if system:
            kwargs["system"] = system
        if request.schema is not None:
            kwargs["tools"] = [{"name": request.schema_name, "description": "Record your answer.",
                                "input_schema": request.schema}]
            kwargs["tool_choice"] = {"type": "tool", "name": request.schema_name}
        where = self.base_url or "api.anthropic.com"
        try:
            resp = await self._get_client().messages.create(**kwargs)
        except (anthropic.APIError, ValueError) as e:  # HTTP errors, timeouts, connections, bad bodies
            raise sdk_error(e, anthropic, where, provider=self.provider, model=self.name) from e
        text_parts: list[str] = []
        structured = None
        for block in resp.content or []:
            if block.type == "tool_use":
                text_parts = [json.dumps(block.input, ensure_ascii=False)]
                structured = "tool"
                break
            if block.type == "text":
                text_parts.append(block.text)
        return Completion(text="".join(text_parts), tokens_in=resp.usage.input_tokens,
                          tokens_out=resp.usage.output_tokens, finish_reason=resp.stop_reason,
                          structured=structured)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
