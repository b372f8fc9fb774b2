"""The content-addressed store of pipeline files: `<CPP_PIPELINES_DIR>/store/<sha256>.cppipe`.

A version of a pipeline names its `.cppipe` files by their content, so a new version
never changes a file an analysis already submitted reads: the new content is another
file, and no file of the store is ever rewritten (they are written read-only, once).
The same content added twice is one file.

Both edges are guarded:

- reading the file a scientist names (`read_pipeline_file`): opened without following a
  symbolic link (O_NOFOLLOW) and without waiting on a FIFO (O_NONBLOCK), then checked to be
  a regular file on the open descriptor (no swap between check and read), and at most
  MAX_PIPELINE_BYTES are read;
- writing the store (`store_pipeline_file`): the store folder is a real folder inside the
  pipelines folder (the path rule, `paths.under` / `paths.real_folder`), the file is
  written under a temporary name and renamed into place (a reader sees all of it or
  nothing), and a name already taken is used only when it is a regular file holding
  exactly that content (never a symbolic link someone planted).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cpp_dagster import paths
from cpp_dagster.analysis.pipeline_steps import printable

STORE_FOLDER = "store"
MAX_PIPELINE_BYTES = 10 * 1024 * 1024  # the JUMP analysis pipeline is 120 kB


class PipelineFileError(ValueError):
    """A pipeline file cannot be read or stored; says why, naming the file."""


@dataclass(frozen=True)
class PipelineFile:
    """The bytes of a pipeline file as read once, and the name it was read from."""

    source: str  # the file's name, as the scientist gave it (no folder)
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def store_name(self) -> str:
        """Its `pipeline_file`, relative to the pipelines folder: `store/<sha256>.cppipe`."""
        return str(PurePosixPath(STORE_FOLDER) / f"{self.sha256}.cppipe")


def read_pipeline_file(path: Path | str, *, max_bytes: int = MAX_PIPELINE_BYTES) -> PipelineFile:
    """The bytes of `path`, once it is a regular file (not a symbolic link, a folder, a
    FIFO or a device) of at most `max_bytes`; PipelineFileError otherwise."""
    path = Path(path)
    shown = printable(path, 300)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PipelineFileError(
                f"{shown} is a symbolic link{_target(path)}: give the pipeline file itself"
            ) from None
        raise PipelineFileError(f"cannot read {shown}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PipelineFileError(f"{shown} is a folder: give a .cppipe file")
        if not stat.S_ISREG(info.st_mode):
            raise PipelineFileError(f"{shown} is not a regular file (a FIFO, socket or device): give a .cppipe file")
        if info.st_size > max_bytes:
            raise PipelineFileError(_too_large(shown, info.st_size, max_bytes))
        os.set_blocking(fd, True)
        chunks, read = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - read)):
            chunks.append(chunk)
            read += len(chunk)
            if read > max_bytes:  # it grew while being read
                raise PipelineFileError(_too_large(shown, read, max_bytes))
    finally:
        os.close(fd)
    if not read:
        raise PipelineFileError(f"{shown} is empty")
    return PipelineFile(path.name, b"".join(chunks))


def _target(link: Path) -> str:
    try:
        return f" (to {printable(os.readlink(link), 300)})"
    except OSError:  # a loop in its folders, or it changed meanwhile
        return ""


def _too_large(shown: str, size: int, max_bytes: int) -> str:
    return (
        f"{shown} is {size / 2**20:,.1f} MB; a pipeline file may be at most {max_bytes / 2**20:g} MB "
        "(is it a .cppipe file?)"
    )


def store_folder(pipelines_dir: Path) -> Path:
    """`<pipelines_dir>/store/`, made if missing; a real folder inside the pipelines folder."""
    Path(pipelines_dir).mkdir(parents=True, exist_ok=True)
    folder = paths.under(pipelines_dir, STORE_FOLDER, what="pipeline store folder")
    folder.mkdir(exist_ok=True)
    return paths.real_folder(folder, "pipeline store folder")


def stored_path(pipelines_dir: Path, pipeline: PipelineFile) -> Path:
    return paths.under(store_folder(pipelines_dir), f"{pipeline.sha256}.cppipe", what="stored pipeline file")


def _holds(path: Path, pipeline: PipelineFile) -> bool:
    """Whether the store file `path` (which exists) holds exactly `pipeline`'s bytes;
    PipelineFileError when it is not a regular file or holds other bytes."""
    try:
        stored = read_pipeline_file(path)
    except PipelineFileError as e:
        raise PipelineFileError(f"the pipeline store is not as cpp-dagster wrote it: {e}") from None
    if stored.data != pipeline.data:
        raise PipelineFileError(
            f"the pipeline store file {path} does not hold the content its name says (it was changed after "
            "it was stored; an analysis submitted with it would run other content): move it away and add again"
        )
    return True


def store_pipeline_file(pipelines_dir: Path, pipeline: PipelineFile) -> tuple[Path, bool]:
    """Write `pipeline` into the store unless it is there already; returns its path and
    whether it was written now. A store that cannot be written is a PipelineFileError."""
    try:
        return _store(pipelines_dir, pipeline)
    except (PipelineFileError, paths.UnsafePathError):
        raise
    except OSError as e:
        raise PipelineFileError(
            f"cannot write the pipeline store in {printable(pipelines_dir, 300)}: {e.strerror or e}"
        ) from None


def _store(pipelines_dir: Path, pipeline: PipelineFile) -> tuple[Path, bool]:
    target = stored_path(pipelines_dir, pipeline)
    if os.path.lexists(target) and _holds(target, pipeline):
        return target, False
    fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".cppipe", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pipeline.data)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o444)  # read by every step pod; never rewritten
        os.replace(tmp, target)  # atomic; replaces a name, never writes through a link
    finally:
        tmp.unlink(missing_ok=True)
    return target, True
