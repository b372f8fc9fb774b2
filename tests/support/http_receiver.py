"""A webhook receiver on 127.0.0.1 (http.server in a thread), for the notification tests:
it records every POST and answers as told (`answer`: an HTTP status, "hang" until
released, or "trickle" its answer one byte at a time, never finishing its headers)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict
    body: dict


@dataclass
class Receiver:
    port: int
    answer: int | str = 200
    received: list[Received] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook", userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def bodies(self, path: str = "/hook") -> list[dict]:
        return [r.body for r in self.received if r.path == path]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                answer = receiver.answer
                if answer == "hang":
                    receiver.released.wait(60)
                    return
                if answer == "trickle":
                    with contextlib.suppress(OSError):  # hung up on, as it should be
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40:  # 17 s, a byte each 0.3 s
                            if receiver.released.is_set():
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.3)
                    return
                receiver.received.append(Received(self.path, dict(self.headers), body))
                self.send_response(int(answer))
                if 300 <= int(answer) < 400:  # a redirect to another path of its own
                    self.send_header("Location", receiver.url("/elsewhere"))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                """Quiet: the tests read what was received, not a request log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def free_port() -> int:
    """A port nothing listens on (yet): a receiver that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
