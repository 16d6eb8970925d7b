"""A real HTTP server for the SDK's tests that answers from a script and logs what it got."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None  # a body sent as is instead of `body` as JSON
    drop: bool = False  # close the connection without a word, as a crashing process would


@dataclass
class Received:
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    at: float


def contract_reply(request: Received) -> Reply:
    """What docs/api.md says the service answers to a well-formed call, with no policy at all:
    enough for tests of the SDK's own bookkeeping. The service itself is tested for real."""
    parts = request.path.strip("/").split("/")
    if request.method == "PUT" and parts[:2] == ["v1", "runs"]:
        return Reply(200, {"run_id": parts[2], **request.body, "status": "running"})
    if request.method == "POST" and parts[-1] == "checkpoints":
        return Reply(200, decision(parts[2], request.body["epoch"]))
    if request.method == "POST" and parts[-1] == "finish":
        return Reply(200, {"run_id": parts[2], "status": request.body["status"]})
    return Reply(404, {"detail": f"no route {request.method} {request.path}"})


def decision(run_id: str, epoch: int, action: str = "continue") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "epoch": epoch,
        "action": action,
        "reason": "scripted",
        "policy": "warmup",
    }


class ScriptedServer:
    """Answers each request with the next scripted Reply, then with `fallback`; keeps a log."""

    def __init__(self) -> None:
        self.script: deque[Reply | Callable[[Received], Reply]] = deque()
        self.fallback: Callable[[Received], Reply] = contract_reply
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def add(self, *replies: Reply | Callable[[Received], Reply]) -> None:
        self.script.extend(replies)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.received if method is None or r.method == method]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            step = self.script.popleft() if self.script else self.fallback
        return step if isinstance(step, Reply) else step(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output for the assertions

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Received(
                    self.command,
                    self.path,
                    json.loads(raw) if raw else None,
                    {k.lower(): v for k, v in self.headers.items()},
                    time.monotonic(),
                )
                reply = server._next(request)
                time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left: what a slow server sees too

            do_GET = do_PUT = do_POST = _serve

        return Handler
