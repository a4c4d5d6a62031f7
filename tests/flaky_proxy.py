"""A real HTTP proxy in front of the S3 test server that misbehaves like real object stores do:
503 SlowDown, dropped connections, a write that lands but whose answer never arrives, a 409
ConditionalRequestConflict (before or after forwarding the write), and a store that ignores
conditional-write headers."""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting conditional operation is in progress.</Message></Error>"
)

# What the proxy does to one request: "pass", "slowdown", "drop" (no answer, nothing forwarded),
# "lose-answer" (forwarded, then the connection is closed before the answer), "forbidden" (403,
# nothing forwarded), "conflict" (409,
# nothing forwarded), "conflict-after-write" (forwarded, then 409 whatever the store said) or
# "ignore-conditions" (forwarded without If-Match / If-None-Match, as lax stores behave) or
# "missing-as-403" (a 404 turned into 403, as S3 answers a caller who may not list the key).
Fault = Callable[[str, str], str]


class FlakyProxy:
    def __init__(self, upstream: str, fault: Fault) -> None:
        target = urlparse(upstream)
        self.faults_served: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = fault(self.command, self.path)
                if action != "pass":
                    proxy.faults_served.append(f"{action} {self.command} {self.path}")
                if action == "slowdown":
                    self._send_error(503, SLOWDOWN)
                    return
                if action == "conflict":
                    self._send_error(409, CONFLICT)
                    return
                if action == "forbidden":
                    self._send_error(403, ACCESS_DENIED)
                    return
                if action == "drop":
                    self.close_connection = True
                    return
                headers = dict(self.headers)
                if action == "ignore-conditions":
                    headers = {
                        name: value
                        for name, value in headers.items()
                        if name.lower() not in ("if-match", "if-none-match")
                    }
                upstream_connection = http.client.HTTPConnection(target.hostname, target.port)
                upstream_connection.request(self.command, self.path, body, headers)
                answer = upstream_connection.getresponse()
                data = answer.read()
                upstream_connection.close()
                if action == "lose-answer":
                    self.close_connection = True
                    return
                if action == "conflict-after-write":
                    self._send_error(409, CONFLICT)
                    return
                if action == "missing-as-403" and answer.status == 404:
                    proxy.faults_served.append(f"403 for a 404 {self.command} {self.path}")
                    self._send_error(403, ACCESS_DENIED)
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _send_error(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def every(n: int, actions: list[str]) -> Fault:
    """The n-th, 2n-th, ... request gets the next of `actions` in turn; the rest pass."""
    counter = itertools.count(1)
    faults = itertools.cycle(actions)
    lock = threading.Lock()

    def fault(method: str, path: str) -> str:
        with lock:
            return next(faults) if next(counter) % n == 0 else "pass"

    return fault


def always_for(method: str, path_part: str, action: str) -> Fault:
    """Every request with this method whose path contains `path_part` gets `action`."""

    def fault(request_method: str, path: str) -> str:
        return action if request_method == method and path_part in path else "pass"

    return fault


def first_n_for(method: str, path_part: str, action: str, n: int) -> Fault:
    """The first `n` requests with this method whose path contains `path_part` get `action`."""
    counter = itertools.count(1)
    lock = threading.Lock()

    def fault(request_method: str, path: str) -> str:
        if request_method != method or path_part not in path:
            return "pass"
        with lock:
            return action if next(counter) <= n else "pass"

    return fault


class RequestLog:
    """A fault that lets every request pass and remembers it: how many reads reached a prefix."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str) -> str:
        with self.lock:
            self.requests.append((method, path))
        return "pass"

    def count(self, method: str, path_prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
