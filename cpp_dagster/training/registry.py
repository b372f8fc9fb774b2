"""Where published models go. One interface, two places:

- `HttpModelRegistry`: a model service over HTTP (CPP_MODEL_REGISTRY_URL), with a bearer
  token from CPP_MODEL_REGISTRY_TOKEN (on Kubernetes from a Secret; never logged).
  `PUT {url}/models/{name}/{version}` uploads the model file, its metadata JSON in the
  `X-Model-Metadata` header; `GET` the same path downloads it, `GET .../metadata` the JSON.
- `FolderModelRegistry`: a folder (CPP_MODEL_REGISTRY_DIR, locally $CPP_NAS_ROOT/models),
  `<name>/<version>/{model file, metadata.json}`, written atomically.

`cpp-dagster train registry` serves a folder registry over the same HTTP interface
(registry_server.py), so the HTTP path runs locally too.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from cpp_dagster import paths
from cpp_dagster.service_settings import Registry
from cpp_dagster.setting_rules import redact_url

# 1-80 of these characters, never starting with a dot: the registry's own staging
# folders (`.<version>.*`, `.upload-*`) start with one, and a version named like them
# would be replaced or deleted by another version's publish
NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,79}$")


class RegistryError(RuntimeError):
    """The model registry refused or could not take a request; the message says why."""


class ModelRegistry(Protocol):
    def publish(self, name: str, version: str, model_file: Path, metadata: dict) -> str:
        """Store the model; returns where it is (a URL or path)."""

    def fetch(self, name: str, version: str, dest_dir: Path) -> Path:
        """Download the model into dest_dir; returns the file."""

    def metadata(self, name: str, version: str) -> dict: ...


def check_name_and_version(name: object, version: object) -> None:
    """A model name and version: each one folder name by the path rule (no `..`, no
    separator, no control character), of the registry's characters and not starting
    with a dot; RegistryError saying which is not."""
    for what, part in (("model name", name), ("model version", version)):
        try:
            paths.component(part, what)
        except paths.UnsafePathError as e:
            raise RegistryError(str(e)) from None
        if not NAME.match(part):
            raise RegistryError(
                f"{what} {part[:100]!r} must be 1-80 letters, digits, '_', '.' or '-', not starting with '.'"
            )


class FolderModelRegistry:
    """Models only under its root (`models/`): `<root>/<name>/<version>/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, name: str, version: str) -> Path:
        check_name_and_version(name, version)
        try:
            return paths.under(self.root, name, version, what="model")
        except paths.UnsafePathError as e:  # a symlinked name folder leading out of the root
            raise RegistryError(str(e)) from None

    def publish(self, name: str, version: str, model_file: Path, metadata: dict) -> str:
        target = self._dir(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            shutil.copyfile(model_file, staging / f"model{Path(model_file).suffix}")
            (staging / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True, default=str))
            staging.chmod(0o755)
        except BaseException:  # a full disk, an interrupt: no half-written staging stays
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():  # a re-run of the same version replaces it
            old = target.with_name(f".{version}.replaced")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
        return str(target)

    def model_file(self, name: str, version: str) -> Path:
        found = sorted(self._dir(name, version).glob("model.*"))
        if not found:
            raise RegistryError(f"no published model {name} {version}")
        return found[0]

    def fetch(self, name: str, version: str, dest_dir: Path) -> Path:
        source = self.model_file(name, version)
        dest = Path(dest_dir) / source.name
        shutil.copyfile(source, dest)
        return dest

    def metadata(self, name: str, version: str) -> dict:
        path = self._dir(name, version) / "metadata.json"
        if not path.exists():
            raise RegistryError(f"no published model {name} {version}")
        return json.loads(path.read_text())


class HttpModelRegistry:
    """`url` may carry `user:password@`: they are sent as Basic credentials (when there is
    no bearer token) and never appear in a request line, a message or a returned location."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 300):
        parts = urlsplit(url.rstrip("/"))
        self.url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.basic = (
            base64.b64encode(f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()).decode()
            if parts.password is not None
            else None
        )
        self.token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=dict(headers or {}))
        if self.token:
            # urllib's own rule for a header that must not follow a redirect: a service
            # redirecting elsewhere never receives the token (nor the URL's credentials)
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        elif self.basic:
            request.add_unredirected_header("Authorization", f"Basic {self.basic}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode(errors="replace")
            raise RegistryError(
                f"model service: {method} {path} answered {error.code} {error.reason}: {detail}"
            ) from None
        except urllib.error.URLError as error:
            raise RegistryError(
                f"cannot reach the model service at {self.url}: {redact_url(str(error.reason))}"
            ) from None
        except (http.client.HTTPException, OSError) as error:  # dropped or cut short mid-request
            raise RegistryError(
                f"model service: {method} {path}: the connection was lost before a whole answer came "
                f"({type(error).__name__}: {redact_url(str(error)) or 'closed'})"
            ) from None
        except ValueError as error:  # a bad URL
            raise RegistryError(
                f"model service: {method} {self.url}{path} failed: {redact_url(str(error)) or type(error).__name__}"
            ) from None

    def _path(self, name: str, version: str) -> str:
        check_name_and_version(name, version)
        return f"/models/{quote(name)}/{quote(version)}"

    def publish(self, name: str, version: str, model_file: Path, metadata: dict) -> str:
        path = self._path(name, version)
        self._request(
            "PUT",
            path,
            Path(model_file).read_bytes(),
            {
                "Content-Type": "application/octet-stream",
                "X-Model-Filename": Path(model_file).name,
                "X-Model-Metadata": json.dumps(metadata, sort_keys=True, default=str),
            },
        )
        return f"{self.url}{path}"

    def fetch(self, name: str, version: str, dest_dir: Path) -> Path:
        meta = self.metadata(name, version)
        dest = Path(dest_dir) / f"model{meta.get('model_suffix', '')}"
        dest.write_bytes(self._request("GET", self._path(name, version)))
        return dest

    def metadata(self, name: str, version: str) -> dict:
        return json.loads(self._request("GET", self._path(name, version) + "/metadata"))


def registry_for_deployment(nas_root: Path, registry: Registry) -> ModelRegistry:
    """The model service at CPP_MODEL_REGISTRY_URL when set, else the folder registry
    (`registry.folder(nas_root)`)."""
    if registry.url:
        return HttpModelRegistry(registry.url, token=registry.token)
    return FolderModelRegistry(registry.folder(nas_root))
