"""`openai:<model>`: the openai SDK, for OpenAI and any OpenAI-compatible server."""

from __future__ import annotations

import json
import os
from typing import Any

import openai

from cai.config import Completion, Request
from cai.errors import AuthError, ProviderError, TransientError
from cai.providers.base import Model, register, sdk_error

# Order tried for a structured reply; a server that rejects one is asked with the next from then on.
STRUCTURED_MODES = ("json_schema", "json_object", "prompt")


def schema_instruction(schema: dict[str, Any]) -> str:
    return ("Reply with one JSON object and nothing else. It must match this JSON schema:\n"
            + json.dumps(schema, sort_keys=True))


@register("openai")
class OpenAIModel(Model):
    supports_logprobs = True
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, name: str, base_url: str | None = None) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        super().__init__(name, base_url)
        self._mode = 0
        self._client: openai.AsyncOpenAI | None = None

    def check(self) -> None:
        self._get_client()

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                if not self.base_url:
                    raise AuthError("OPENAI_API_KEY is not set (or pass --base-url for a local server)",
                                    provider=self.provider, model=self.name)
                key = "no-key"
            # Retries are owned by cai.retry, so the SDK makes exactly one attempt.
            self._client = openai.AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0)
        return self._client

    async def complete(self, request: Request) -> Completion:
        cfg = request.config
        kwargs: dict[str, Any] = {"model": self.name, "max_tokens": cfg.max_tokens,
                                  "temperature": cfg.temperature, "timeout": cfg.timeout}
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed
        if cfg.top_logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = cfg.top_logprobs
        messages = [dict(m) for m in request.messages]
        if request.schema is None:
            return await self._send(messages, kwargs, None)
        while True:
            mode = STRUCTURED_MODES[self._mode]
            extra = dict(kwargs)
            msgs = messages
            if mode == "json_schema":
                extra["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": request.schema_name, "schema": request.schema}}
            elif mode == "json_object":
                extra["response_format"] = {"type": "json_object", "schema": request.schema}
            else:
                msgs = [{"role": "system", "content": schema_instruction(request.schema)}, *messages]
            try:
                return await self._send(msgs, extra, mode)
            except _Unsupported:
                self._mode += 1

    async def _send(self, messages: list[dict[str, str]], kwargs: dict[str, Any], mode: str | None) -> Completion:
        where = self.base_url or "api.openai.com"
        try:
            resp = await self._get_client().chat.completions.create(messages=messages, **kwargs)
        except openai.APIStatusError as e:
            body = _error_text(e)
            if mode not in (None, "prompt") and e.status_code in (400, 422, 500) and _mentions_format(body):
                raise _Unsupported(body, provider=self.provider, model=self.name, status=e.status_code) from e
            raise sdk_error(e, openai, where, provider=self.provider, model=self.name, message=body) from e
        except (openai.APIError, ValueError) as e:  # timeouts, connections, invalid or truncated bodies
            raise sdk_error(e, openai, where, provider=self.provider, model=self.name) from e
        if not getattr(resp, "choices", None):
            raise TransientError(f"response from {where} has no choices", provider=self.provider, model=self.name)
        choice = resp.choices[0]
        top = None
        if kwargs.get("logprobs") and choice.logprobs is not None and choice.logprobs.content:
            top = [[(t.token, float(t.logprob)) for t in (tok.top_logprobs or [])]
                   for tok in choice.logprobs.content]
        usage = resp.usage
        details = getattr(usage, "prompt_tokens_details", None)  # prompt-cache reads (and writes, newer models)
        return Completion(
            text=choice.message.content or "",
            tokens_in=(usage.prompt_tokens or 0) if usage else 0,
            tokens_out=(usage.completion_tokens or 0) if usage else 0,
            tokens_cached=getattr(details, "cached_tokens", None) or 0,
            tokens_cache_write=getattr(details, "cache_write_tokens", None) or 0,
            finish_reason=choice.finish_reason, top_logprobs=top, structured=mode)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class _Unsupported(ProviderError):
    """The server does not take this structured-output mode."""


def _error_text(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(e.message)


def _mentions_format(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in ("response_format", "json_schema", "json_object", "'text'"))
