"""The `Model` protocol, `get_model` (providers come from the plugin registry) and the HTTP error mapping shared
by the SDK providers."""

from __future__ import annotations

import json
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from cai import plugins
from cai.calls import Completion, Request
from cai.errors import (
    AuthError,
    ConnectFailed,
    InputError,
    NotFound,
    ProviderError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from cai.redact import SECRET_ENV, clean_url, redact

__all__ = ["SECRET_ENV", "Model", "TokenCounter", "check_base_url", "get_model", "http_error", "provider_class",
           "redact", "schema_instruction", "sdk_error"]

class TokenCounter(Protocol):
    """A model's own prompt-token count of a request (`Model.token_counter`), and text of a given token length
    (stands in for a reply not written yet)."""

    method: str  # how it counts, in words

    def count(self, request: Request) -> int: ...

    def filler(self, tokens: int) -> str: ...


class Model(ABC):
    """A model behind a provider. One method to call: `complete`."""

    provider: ClassVar[str]
    supports_logprobs: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = None  # where the SDK sends requests when no base URL is given
    base_url_env: ClassVar[str | None] = None  # the environment variable that gives a base URL when none is given

    def __init__(self, name: str, base_url: str | None = None) -> None:
        self.name = name
        if not base_url and self.base_url_env and (env := os.environ.get(self.base_url_env)):
            base_url = check_base_url(env, self.base_url_env)
        self.base_url = base_url or None

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.name}" if self.name else self.provider

    @property
    def where(self) -> str:
        """The endpoint as error messages name it (credentials in the URL redacted)."""
        return clean_url(self.base_url or self.default_base_url or self.provider)

    def identity_url(self) -> str | None:
        """The base URL without credentials (`cai.redact.clean_url`): what names the endpoint in a cache key, the
        resume fingerprint and the engine's per-endpoint pacing (the same endpoint with another key is the same)."""
        return clean_url(self.base_url) if self.base_url else None

    def identity(self) -> dict[str, Any]:
        """What names this model in a cache key (never a key or a timeout)."""
        return {"provider": self.provider, "model": self.name, "base_url": self.identity_url()}

    def model_file(self) -> dict[str, Any] | None:
        """The file this process loads the model from, for the manifest ({"file", "sha256", ...}); None for a
        model behind an API."""
        return None

    def sdk_url(self) -> tuple[str | None, dict[str, str] | None]:
        """The base URL and query parameters to give the SDK: the SDKs append their paths to the base URL as a
        string, so its query (e.g. `?api-key=…`) goes as `default_query` instead. Userinfo stays in the URL."""
        if not self.base_url or "?" not in self.base_url:
            return self.base_url, None
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(query="")), dict(parse_qsl(parts.query, keep_blank_values=True))

    def check(self) -> None:
        """Raise now (AuthError, InputError) if this model cannot be used at all, e.g. a missing API key."""

    @classmethod
    def token_counter(cls, name: str) -> TokenCounter | None:
        """Counts the prompt tokens of a request for the model `name` exactly and offline (its own tokenizer), for
        `cai estimate`; None (the default) where there is no such tokenizer: the estimate then uses characters / 4."""
        return None

    @abstractmethod
    async def complete(self, request: Request) -> Completion:
        """Send one request; raise a ProviderError subclass on failure."""

    async def aclose(self) -> None:
        """Release connections."""


def schema_instruction(schema: dict[str, Any]) -> str:
    """The system turn that asks for a reply following `schema`, for a model asked without a structured-output
    parameter (`structured="prompt"`)."""
    return ("Reply with one JSON object and nothing else. It must match this JSON schema:\n"
            + json.dumps(schema, sort_keys=True))


def check_base_url(url: str, name: str) -> str:
    """`url` if it is an http:// or https:// URL that names a host; else InputError naming `name`, the option or
    environment variable it came from (a URL the SDK cannot reach would be retried as an outage)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number, a bad IPv6 address
        ok = False
    if not ok or any(c.isspace() for c in url):
        raise InputError(f"{name} {clean_url(url)!r} is not an http:// or https:// URL with a host, "
                         "e.g. http://127.0.0.1:8000/v1")
    return url


def provider_class(spec: str) -> type[Model]:
    """The `Model` class of the provider a spec names (`local`, `openai:...`), loaded but not built: nothing is
    checked, opened or made (`cai.core.estimate` reads its `supports_logprobs` and `token_counter`)."""
    prefix, _, name = spec.partition(":")
    if prefix not in plugins.names("provider"):
        known = ", ".join(plugins.names("provider"))
        raise InputError(f"unknown model provider {prefix!r} in {spec!r} (known: {known})")
    try:
        cls: type[Model] = plugins.load("provider", prefix)
    except ModuleNotFoundError as e:  # only the local provider's optional dependency, not any ImportError
        if prefix != "local" or e.name != "llama_cpp":
            raise
        raise InputError("the local model needs the 'local' extra: pip install 'cai[local]' "
                         "(llama-cpp-python is not installed)") from None
    if prefix != "local" and not name:
        raise InputError(f"model spec {spec!r} needs a model name, e.g. {prefix}:<model>")
    return cls


def get_model(spec: str, base_url: str | None = None) -> Model:
    """Build a model from `local`, `local:/path.gguf`, `openai:<model>` or `anthropic:<model>`; a `base_url` that is
    not an http(s) URL is an InputError."""
    if base_url:
        check_base_url(base_url, "base_url (--base-url)")
    return provider_class(spec)(spec.partition(":")[2], base_url)


def could_not_connect(error: BaseException) -> bool:
    """True if a connection error's cause chain shows the connection was never made (refused, no route,
    unknown host), as opposed to one dropped mid-request."""
    seen: BaseException | None = error
    for _ in range(10):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if seen is None:
            return False
        if isinstance(seen, (ConnectionRefusedError, socket.gaierror)) or type(seen).__name__ == "ConnectError":
            return True
    return False


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("retry-after-ms")
    if raw:
        try:
            return float(raw) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def http_error(status: int, message: str, where: str, headers: Mapping[str, str] | None = None, *,
               provider: str | None = None, model: str | None = None) -> ProviderError:
    """Map an HTTP status to the error class that decides retry / fail record / stop run; the error carries
    `status`, `provider` and `model`."""
    text = redact(f"HTTP {status} from {where}: {message}")[:500]
    context: dict[str, Any] = {"provider": provider, "model": model, "status": status}
    if status == 429:
        return RateLimited(text, _retry_after(headers), **context)
    if status in (401, 403):
        return AuthError(text, **context)
    if status == 404:
        return NotFound(text, **context)
    if status in (408, 409) or status >= 500:
        return TransientError(text, **context)
    return RequestRejected(text, **context)


def sdk_error(e: Exception, sdk: ModuleType, where: str, *, provider: str, model: str,
              message: str | None = None) -> ProviderError:
    """The ProviderError for an exception of the openai or anthropic SDK (`sdk`, the module: both SDKs have the
    same exception classes). Raise it `from e`. `message` replaces the server's error text of an HTTP error."""
    context: dict[str, Any] = {"provider": provider, "model": model}
    if isinstance(e, sdk.APIStatusError):
        return http_error(e.status_code, message if message is not None else str(e.message), where,
                          e.response.headers, **context)
    if isinstance(e, sdk.APITimeoutError):
        return TransientError(f"{type(e).__name__} talking to {where}: {e}", **context)
    if isinstance(e, sdk.APIConnectionError):
        cls = ConnectFailed if could_not_connect(e) else TransientError
        return cls(f"{type(e).__name__} talking to {where}: {e}", **context)
    return TransientError(f"bad response from {where}: {e}", **context)  # an invalid or truncated body
