"""Clients of the model registry server for its tests: a PUT sent by hand (headers
only when a refusal should come before the body) and what is left in a folder."""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path

TOKEN = "s3cret-token"
MiB = 1024 * 1024


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def put(
    port: int, path: str, body: bytes | io.IOBase = b"model", length: int | None = None, token: str | None = TOKEN
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "Content-Length": str(len(body) if length is None else length),
        "X-Model-Filename": "model.joblib",
        "X-Model-Metadata": json.dumps({"workflow": "w"}),
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.putrequest("PUT", path, skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    if length is None:  # the whole body; otherwise only the headers (a refusal comes first)
        if isinstance(body, bytes):
            conn.send(body)
        else:
            while chunk := body.read(MiB):
                conn.send(chunk)
    response = conn.getresponse()
    answer = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, answer
