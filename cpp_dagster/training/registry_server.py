"""A small model registry the project runs: a folder registry served over the HTTP
interface of registry.HttpModelRegistry (`cpp-dagster train registry`). With a token
set (CPP_MODEL_REGISTRY_TOKEN), every request must carry it as a bearer token."""
from __future__ import annotations

import hmac
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from cpp_dagster import paths
from cpp_dagster.training.registry import FolderModelRegistry, RegistryError

MAX_UPLOAD = 2 * 1024**3


def _handler(registry: FolderModelRegistry, token: str | None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # no request log lines on stderr
            return

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._reply(code, json.dumps({"error": message}).encode())

        def _route(self) -> tuple[str, str, bool] | None:
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self._error(401, "missing or wrong bearer token")
                return None
            parts = [unquote(p) for p in self.path.strip("/").split("/")]
            if len(parts) in (3, 4) and parts[0] == "models" and (len(parts) == 3 or parts[3] == "metadata"):
                return parts[1], parts[2], len(parts) == 4
            self._error(404, f"no such resource {self.path}")
            return None

        def do_PUT(self):  # noqa: N802 (http.server's naming)
            route = self._route()
            if route is None:
                return
            name, version, is_metadata = route
            length = int(self.headers.get("Content-Length", "0"))
            if is_metadata or not 0 < length <= MAX_UPLOAD:
                self._error(400, "PUT /models/NAME/VERSION with the model file as the body")
                return
            try:
                metadata = json.loads(self.headers.get("X-Model-Metadata", "{}"))
                with tempfile.TemporaryDirectory() as tmp:
                    upload = paths.under(Path(tmp), Path(self.headers.get("X-Model-Filename", "model.bin")).name,
                                         what="X-Model-Filename")
                    upload.write_bytes(self.rfile.read(length))
                    location = registry.publish(name, version, upload, metadata)
            except (RegistryError, paths.UnsafePathError, json.JSONDecodeError) as error:
                self._error(400, str(error))
                return
            self._reply(201, json.dumps({"name": name, "version": version, "location": location}).encode())

        def do_GET(self):  # noqa: N802
            route = self._route()
            if route is None:
                return
            name, version, is_metadata = route
            try:
                if is_metadata:
                    self._reply(200, json.dumps(registry.metadata(name, version)).encode())
                else:
                    model = registry.model_file(name, version)
                    self._reply(200, model.read_bytes(), "application/octet-stream")
            except RegistryError as error:
                self._error(404, str(error))

    return Handler


def serve(root: Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          background: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _handler(FolderModelRegistry(root), token))
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        server.serve_forever()
    return server
