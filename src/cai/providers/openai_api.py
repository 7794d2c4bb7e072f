"""`openai:<model>`: the openai SDK, for OpenAI and any OpenAI-compatible server."""

from __future__ import annotations

import os
from typing import Any

import openai

from cai.calls import Completion, Request
from cai.errors import AuthError, ProviderError, TransientError
from cai.providers.base import Model, schema_instruction, sdk_error

# Order tried for a structured reply; a server that rejects one is asked with the next from then on.
STRUCTURED_MODES = ("json_schema", "json_object", "prompt")


class OpenAIModel(Model):
    provider = "openai"
    supports_logprobs = True
    default_base_url = "https://api.openai.com/v1"
    base_url_env = "OPENAI_BASE_URL"

    def __init__(self, name: str, base_url: str | None = None) -> None:
        super().__init__(name, base_url)
        self._mode = 0
        self._client: openai.AsyncOpenAI | None = None

    def check(self) -> None:
        self._get_client()

    def client(self) -> Any:
        """The SDK's async client (made on first use), e.g. for the batch API."""
        return self._get_client()

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                if not self.base_url:
                    raise AuthError("OPENAI_API_KEY is not set (or pass --base-url for a local server)",
                                    provider=self.provider, model=self.name)
                key = "no-key"
            # Retries are owned by cai.core.retry, so the SDK makes exactly one attempt.
            url, query = self.sdk_url()
            self._client = openai.AsyncOpenAI(api_key=key, base_url=url, default_query=query, max_retries=0)
        return self._client

    @property
    def structured_mode(self) -> str:
        """The structured-output mode this model is asked with now (the first of STRUCTURED_MODES the endpoint
        has not refused)."""
        return STRUCTURED_MODES[self._mode]

    def refused_mode(self, mode: str) -> None:
        """The endpoint refused `mode`: ask with the next one from now on (a no-op if already past it)."""
        if STRUCTURED_MODES[self._mode] == mode and self._mode + 1 < len(STRUCTURED_MODES):
            self._mode += 1

    def body(self, request: Request, mode: str | None = None) -> dict[str, Any]:
        """The chat-completions parameters for `request` (without the timeout): what `complete` sends and what a
        batch line carries. A request with a schema is asked in `mode` (default: `structured_mode`)."""
        cfg = request.config
        body: dict[str, Any] = {"model": self.name, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = cfg.top_logprobs
        messages = [dict(m) for m in request.messages]
        if request.schema is not None:
            mode = mode or self.structured_mode
            if mode == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": request.schema_name, "schema": request.schema}}
            elif mode == "json_object":
                body["response_format"] = {"type": "json_object", "schema": request.schema}
            else:
                messages = [{"role": "system", "content": schema_instruction(request.schema)}, *messages]
        body["messages"] = messages
        return body

    async def complete(self, request: Request) -> Completion:
        while True:
            mode = self.structured_mode if request.schema is not None else None
            try:
                return await self._send(self.body(request, mode), request.config.timeout, mode)
            except _Unsupported:
                self.refused_mode(mode or "")

    async def _send(self, body: dict[str, Any], timeout: float, mode: str | None) -> Completion:
        where = self.where
        try:
            resp = await self._get_client().chat.completions.create(**body, timeout=timeout)
        except openai.APIStatusError as e:
            text = _error_text(e)
            if mode not in (None, "prompt") and e.status_code in (400, 422, 500) and mentions_format(text):
                raise _Unsupported(text, provider=self.provider, model=self.name, status=e.status_code) from e
            raise sdk_error(e, openai, where, provider=self.provider, model=self.name, message=text) from e
        except (openai.APIError, ValueError) as e:  # timeouts, connections, invalid or truncated bodies
            raise sdk_error(e, openai, where, provider=self.provider, model=self.name) from e
        return self.completion(resp, mode, bool(body.get("logprobs")), where)

    def completion(self, resp: Any, mode: str | None, logprobs: bool, where: str) -> Completion:
        """A `ChatCompletion` as a Completion (`mode`: the structured mode it was asked in)."""
        if not getattr(resp, "choices", None):
            raise TransientError(f"response from {where} has no choices", provider=self.provider, model=self.name)
        choice = resp.choices[0]
        top = None
        if logprobs and choice.logprobs is not None and choice.logprobs.content:
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


def mentions_format(text: str) -> bool:
    """Whether an error text is about the structured-output parameters (the endpoint does not take them)."""
    low = text.lower()
    return any(w in low for w in ("response_format", "json_schema", "json_object", "'text'"))
