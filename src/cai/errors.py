"""The exception tree, by meaning: bad input (InputError), a configuration the run folder refuses (ConfigError),
a failed store or output (StorageError), a held lock (RunLocked), a failed model call (ProviderError) and an
interruption. Every CaiError carries the exit code the CLI uses as `exit_code`.

Exit codes: 0 ok, 1 the run had failed records, 2 bad usage, input, files or disk, 3 another cai
process holds the run folder, 4 the model endpoint is unusable (unreachable, model not found),
5 the budget (`--max-cost`) is reached, 130 interrupted.
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar, Self

from cai.redact import redact

_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")


def one_line(text: str) -> str:
    """`text` with its line breaks (and the blanks around them) turned into single spaces."""
    return _BREAKS.sub(" ", text).strip()


class CaiError(Exception):
    """Base of every error cai raises on purpose."""

    exit_code = 1


class _Located(CaiError):
    """An error about a file or folder: the message starts with `path:line: ` (or `path: `) when given."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class InputError(_Located):
    """Bad usage or input: an option, a file, a line or a field the user must fix (exit 2)."""

    exit_code = 2


class ConfigError(_Located):
    """The configuration cannot be used with this run folder (exit 2)."""

    exit_code = 2


class ConfigMismatch(ConfigError):
    """An existing run was started with a different configuration (exit 2)."""


class StorageError(_Located):
    """The run folder, its store, a cache or an output file failed (exit 2). `path` names the file or folder."""

    exit_code = 2


class OutputError(StorageError):
    """The run folder, the store or an export cannot be written or read (disk full, read-only, I/O error);
    exit 2. `path` names the file or folder."""


class DamagedStore(StorageError):
    """A run folder's `run.sqlite` is missing, empty or not a readable cai store (exit 2)."""


class RunLocked(CaiError):
    """Another live process holds the run folder's lock (exit 3); `pid` is the holder's, if known."""

    exit_code = 3

    def __init__(self, message: str, *, path: str, pid: int | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.pid = pid


class ProviderError(CaiError):
    """A model call failed. `fatal` errors stop the whole run instead of failing one record.

    Like httpx's exceptions, each carries its context as attributes: `provider` (openai, anthropic, local),
    `model` (the model name), `status` (the HTTP status, when there was an answer) and `stage` (draft, critique,
    revise, grade: set by the pipeline with `with_stage`). The SDK exception it came from is `__cause__`.
    `str()` and `repr()` are one line with API keys redacted, and neither includes the cause.
    """

    retryable = False
    fatal = False
    _fields: ClassVar[tuple[str, ...]] = ("provider", "model", "status", "stage")

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None,
                 status: int | None = None, stage: str | None = None) -> None:
        super().__init__(one_line(redact(message)))
        self.provider = provider
        self.model = model
        self.status = status
        self.stage = stage

    @property
    def message(self) -> str:
        """The one-line, redacted message (what `str()` gives)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return one_line(redact(self.message))

    def __repr__(self) -> str:
        fields = "".join(f", {k}={getattr(self, k, None)!r}" for k in self._fields)
        return redact(f"{type(self).__name__}({str(self)!r}{fields})")

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (like `dataclasses.replace`); cause, context and traceback are kept."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        new.__cause__, new.__context__ = self.__cause__, self.__context__
        new.__suppress_context__ = self.__suppress_context__
        return new.with_traceback(self.__traceback__)

    def with_stage(self, stage: str) -> Self:
        """A copy of this error that names the pipeline stage it failed in."""
        return self.replace(stage=stage)


class TransientError(ProviderError):
    """Worth retrying: 408/409/5xx, timeouts, dropped connections, bad bodies."""

    retryable = True


class ConnectFailed(TransientError):
    """The endpoint refused or could not take the connection (nothing was sent, nothing is billed)."""


class RateLimited(TransientError):
    """HTTP 429; `retry_after` is the server's hint in seconds, if any."""

    _fields: ClassVar[tuple[str, ...]] = (*ProviderError._fields, "retry_after")

    def __init__(self, message: str, retry_after: float | None = None, *, provider: str | None = None,
                 model: str | None = None, status: int | None = None, stage: str | None = None) -> None:
        super().__init__(message, provider=provider, model=model, status=status, stage=stage)
        self.retry_after = retry_after


class RequestRejected(ProviderError):
    """A 400-class answer about this request: fails the record, not the run."""


class NotFound(RequestRejected):
    """HTTP 404: a wrong model name or base URL when no call to that endpoint has succeeded yet."""


class AuthError(ProviderError):
    """401/403: the whole run stops at once (exit 2)."""

    exit_code = 2
    fatal = True


class EndpointDown(ProviderError):
    """The endpoint refuses every connection, or the model does not exist there: the run stops early
    instead of failing every record one by one (exit 4). It carries the provider, model and status of the
    ConnectFailed or NotFound that caused it (its `__cause__`)."""

    exit_code = 4
    fatal = True


class BudgetExhausted(CaiError):
    """The next call would cross the budget (`--max-cost`): the run stopped before sending it, what is done is
    kept and exported (exit 5). `spent` and `limit` in USD; `left`: records not finished."""

    exit_code = 5

    def __init__(self, message: str, *, spent: float = 0.0, limit: float = 0.0, left: int = 0) -> None:
        super().__init__(message)
        self.spent, self.limit, self.left = spent, limit, left


class Interrupted(CaiError):
    """Ctrl-C or SIGTERM (exit 130)."""

    exit_code = 130
