"""The exception tree; every CaiError carries the exit code the CLI uses.

Exit codes: 0 ok, 1 the run had failed records, 2 bad usage, input, files or disk, 3 another cai
process holds the run folder, 4 the model endpoint is unusable (unreachable, model not found),
130 interrupted.
"""

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


class OutputError(InputError):
    """The run folder, the store or an export cannot be written or read (disk full, read-only, I/O error);
    exit 2. `path` names the file or folder."""


class DamagedStore(InputError):
    """A run folder's `run.sqlite` is missing, empty or not a readable cai store (exit 2)."""


class RunLocked(CaiError):
    """Another live process holds the run folder's lock (exit 3); `pid` is the holder's, if known."""

    exit_code = 3

    def __init__(self, message: str, *, path: str, pid: int | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.pid = pid


class ConfigMismatch(InputError):
    """An existing run was started with a different configuration (exit 2)."""


class ProviderError(CaiError):
    """A model call failed. `fatal` errors stop the whole run instead of failing one record."""

    retryable = False
    fatal = False


class TransientError(ProviderError):
    """Worth retrying: 408/409/5xx, timeouts, dropped connections, bad bodies."""

    retryable = True


class ConnectFailed(TransientError):
    """The endpoint refused or could not take the connection (nothing was sent, nothing is billed)."""


class RateLimited(TransientError):
    """HTTP 429; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
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
    instead of failing every record one by one (exit 4)."""

    exit_code = 4
    fatal = True


class Interrupted(CaiError):
    """Ctrl-C or SIGTERM (exit 130)."""

    exit_code = 130
