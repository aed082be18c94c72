"""A local chat-completions server for the tests: the real ``openai`` client talks to it.

Speaks just enough of ``POST /v1/chat/completions`` (JSON body in, ``ChatCompletion`` JSON out,
with ``usage`` and a ``cost`` field) and can be scripted to fail the ways real servers do:

    "429"           HTTP 429 with a ``Retry-After`` header
    "500"           HTTP 500 with an error body
    "slow"          the reply comes after ``slow_seconds`` (past the client's timeout)
    "malformed"     HTTP 200 whose body is not JSON
    "empty_choices" HTTP 200 with ``"choices": []``
    "empty_content" HTTP 200 whose message content is ""
    "length"        HTTP 200 cut off (``finish_reason: "length"``)
    "drop"          the connection is closed half-way through the body
    "drip"          the body comes a few bytes at a time, ``slow_seconds`` in all (each read is quick)
    "401"           HTTP 401 (a bad API key; not worth retrying)

Every request is logged (its messages, the failure mode served, the Authorization header) so
tests can assert on what was sent. Runs in a daemon thread on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAILURE_MODES = ("429", "500", "slow", "malformed", "empty_choices", "empty_content", "length", "drop", "drip")
"""Every transient failure the server can serve (all must be survived by retrying)."""

Replier = Callable[[dict[str, Any]], str]
"""``replier(body) -> content`` of a successful reply."""
FailurePlan = Callable[[dict[str, Any], int], str | None]
"""``plan(body, attempt)`` -> a failure mode or None; ``attempt`` counts earlier sends of the
same messages (0 for the first)."""


def messages_key(body: dict[str, Any]) -> str:
    """A stable id of a request's messages (what the tests compare between runs)."""
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()


@dataclass
class LoggedRequest:
    """One request the server received."""

    key: str
    body: dict[str, Any]
    mode: str | None
    authorization: str | None
    path: str


def default_replier(body: dict[str, Any]) -> str:
    """A short deterministic reply naming the request (one line)."""
    return f"Analysis {messages_key(body)[:8]}: go north."


@dataclass
class ChatServer:
    """Scriptable chat-completions server; use as a context manager (or start/stop)."""

    replier: Replier = default_replier
    plan: FailurePlan = lambda body, attempt: None  # noqa: E731
    retry_after: str = "0"
    slow_seconds: float = 1.0
    cost_per_token: float = 1e-6
    gate: threading.Event | None = None
    """When set to an Event, requests past ``gate_after`` wait for it (to freeze a run mid-way)."""
    gate_after: int = 0
    log: list[LoggedRequest] = field(default_factory=list)
    _attempts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self.gate is not None:
                self.gate.set()  # release anything still waiting
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------- bookkeeping
    def record(self, body: dict[str, Any], authorization: str | None, path: str) -> tuple[str | None, int]:
        """Log a request; returns the failure mode to serve and its index in the log."""
        key = messages_key(body)
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            mode = self.plan(body, attempt)
            self.log.append(LoggedRequest(key, body, mode, authorization, path))
            return mode, len(self.log) - 1

    def served_keys(self, ok_only: bool = False) -> list[str]:
        """Message keys of the logged requests (only those answered successfully with ok_only)."""
        with self._lock:
            return [r.key for r in self.log if not ok_only or r.mode is None]


def completion_body(content: str, body: dict[str, Any], cost_per_token: float, finish_reason: str = "stop") -> dict:
    """A ChatCompletion-shaped JSON reply with usage and cost."""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_tokens = len(content.split())
    total = prompt_tokens + completion_tokens
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
            "cost": round(total * cost_per_token, 12),
        },
    }


def _handler_for(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
            pass

        def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                return
            mode, index = server.record(body, self.headers.get("Authorization"), self.path)
            if server.gate is not None and index >= server.gate_after:
                server.gate.wait()
            try:
                self.serve(mode, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) or went away: nothing to do

        def serve(self, mode: str | None, body: dict[str, Any]) -> None:
            error = {"error": {"message": f"injected {mode}", "type": "test", "code": mode}}
            if mode == "429":
                self.send_json(429, error, {"Retry-After": server.retry_after})
            elif mode == "500":
                self.send_json(500, error)
            elif mode == "401":
                self.send_json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
            elif mode == "malformed":
                self.send_json(200, b'{"id": "chatcmpl-test", "choices": [{"message": ')
            elif mode == "empty_choices":
                reply = completion_body("x", body, server.cost_per_token)
                self.send_json(200, reply | {"choices": []})
            elif mode in ("drop", "drip"):
                data = json.dumps(completion_body(server.replier(body), body, server.cost_per_token)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "drop":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the rest never comes
                    return
                pieces = [data[i : i + 8] for i in range(0, len(data), 8)]
                for piece in pieces:  # each read is quick, the whole reply is slow
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(server.slow_seconds / len(pieces))
            else:
                if mode == "slow":
                    time.sleep(server.slow_seconds)
                content = "" if mode == "empty_content" else server.replier(body)
                finish = "length" if mode == "length" else "stop"
                self.send_json(200, completion_body(content, body, server.cost_per_token, finish))

    return Handler
