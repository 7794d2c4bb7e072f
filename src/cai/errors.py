"""The exception tree; every CaiError carries the exit code the CLI uses."""

from __future__ import annotations


class CaiError(Exception):
    """Base of every error cai raises on purpose."""

    exit_code = 1


class InputError(CaiError):
    """Bad input: a file, a line or a field the user must fix (exit 2)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ConfigMismatch(InputError):
    """An existing run was started with a different configuration (exit 2)."""


class ProviderError(CaiError):
    """A model call failed."""

    retryable = False


class TransientError(ProviderError):
    """Worth retrying: 408/409/5xx, timeouts, dropped connections, bad bodies."""

    retryable = True


class RateLimited(TransientError):
    """HTTP 429; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(ProviderError):
    """A 400-class answer about this request: fails the record, not the run."""


class AuthError(ProviderError):
    """401/403: the whole run stops at once (exit 2)."""

    exit_code = 2


class Interrupted(CaiError):
    """Ctrl-C or SIGTERM (exit 130)."""

    exit_code = 130
