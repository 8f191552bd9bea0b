"""Where runs are stored: a local directory or ``s3://bucket/prefix``, through fsspec.

Writes are atomic: locally a temporary file is renamed into place; on S3 each object is put
whole. A reader therefore never sees a partial file.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import fsspec
import polars as pl

from fmbench.errors import ConfigError, StorageError


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than file:// (e.g. s3://)."""
    return "://" in url and not url.startswith("file://")


def output_problem(output: str) -> str | None:
    """What is wrong with a run's output location (a directory, ``file://`` path or ``s3://bucket/prefix``),
    or None: a URL must name its bucket (``s3://`` alone would become a local directory named ``s3:``)."""
    if "://" not in output:
        return None if output.strip() else "give a directory or s3://bucket/prefix"
    scheme, rest = output.split("://", 1)
    if scheme == "file":
        return None if rest.strip("/") else "give a directory after file://"
    if not rest.split("/", 1)[0]:
        return f"give a bucket ({scheme}://bucket/prefix)"
    return None


def output_location(output: str) -> str:
    """A run's output as the location to write to: a ``file://`` output as the local path it names,
    any other as it is.

    Raises:
        ConfigError: the output names no place (`output_problem`).
    """
    problem = output_problem(output)
    if problem:
        raise ConfigError(f"output {output!r}: {problem}")
    return output.removeprefix("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base, *parts))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it.

    Raises:
        StorageError: no filesystem is installed for its scheme.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{url}: unsupported storage location ({exc})") from exc
    return fs, path


def storage_error(url: str, action: str, exc: BaseException) -> StorageError:
    """A store's error (fsspec, s3fs, botocore, OS) as one `StorageError` line naming ``url``."""
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{url}: not found (while trying to {action})")
    if isinstance(exc, PermissionError):
        return StorageError(f"{url}: access denied (while trying to {action})")
    return StorageError(f"{url}: cannot {action}: {exc.__class__.__name__}: {exc}")


def check_location(url: str) -> None:
    """Fail unless runs can be stored at ``url``: the bucket of a remote URL must exist and this
    identity may list it; a local directory must be one, or its nearest existing parent must be a
    directory this process may write in. Nothing is created.

    Raises:
        StorageError: the bucket does not exist, access is denied, the store cannot be reached, or a
            local path is not a directory.
    """
    if not is_remote(url):
        _check_local_directory(url)
        return
    fs, path = filesystem(url)
    bucket = url.split("://", 1)[0] + "://" + path.split("/", 1)[0]
    try:
        fs.ls(path.split("/", 1)[0], detail=False, refresh=True)
    except Exception as exc:
        raise storage_error(bucket, "list the bucket", exc) from exc


def _check_local_directory(url: str) -> None:
    probe = Path(url).absolute()
    try:
        while not probe.exists():  # (a path through a file does not exist either)
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"{probe} is not a directory")
    except PermissionError as exc:
        raise StorageError(f"{url}: access denied ({exc.strerror}: {exc.filename})") from exc
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"{probe}: access denied (not writable)")


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically."""
    if not is_remote(url):
        path = Path(url)
        # The writer's pid in the name lets a resumed run tell a killed writer's leftover from a live one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # (also a parent that is not a directory)
                tmp.unlink()
            raise storage_error(url, "write", exc) from exc
        return
    fs, key = filesystem(url)
    try:
        fs.pipe_file(key, data)  # one PUT: the object appears whole or not at all
    except Exception as exc:  # botocore/aiobotocore raise many types; translated here, once
        raise storage_error(url, "write", exc) from exc


_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (not a pid at all: False)."""
    if pid <= 0:  # (0 and negative numbers name process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def remove_orphaned_temp_files(url: str) -> list[str]:
    """Delete temporary files under a local directory whose writer process is gone; return them.

    A writer killed between writing its temporary file and renaming it leaves ``.NAME.PID-XXXX.tmp``
    behind. Nobody reads these (they are hidden and never renamed later), but a resumed run clears
    them so the run directory holds only complete files. S3 has none: objects are put whole.
    """
    if is_remote(url) or not Path(url).is_dir():
        return []
    removed = []
    for f in Path(url).rglob(".*.tmp"):
        m = _TEMP_NAME.match(f.name)
        if m and f.is_file() and not pid_alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(str(f))
    return removed


def write_text(url: str, text: str) -> None:
    """Write a whole text file (UTF-8) atomically."""
    write_bytes(url, text.encode("utf-8"))


def read_bytes(url: str) -> bytes:
    """Read a whole file."""
    if not is_remote(url):
        try:
            return Path(url).read_bytes()
        except OSError as exc:
            raise storage_error(url, "read", exc) from exc
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except Exception as exc:
        raise storage_error(url, "read", exc) from exc


def read_text(url: str) -> str:
    """Read a whole UTF-8 text file."""
    return read_bytes(url).decode("utf-8")


def remove(url: str) -> None:
    """Delete one file (missing is fine).

    Raises:
        StorageError: it exists and cannot be deleted.
    """
    fs, path = filesystem(url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(url, "delete", exc) from exc


def remove_tree(url: str) -> None:
    """Delete a directory and everything under it (missing is fine).

    Raises:
        StorageError: it exists and cannot be deleted.
    """
    if not is_remote(url):
        try:
            shutil.rmtree(url)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(url, "delete", exc) from exc
        return
    fs, path = filesystem(url)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        return
    except Exception as exc:  # botocore/aiobotocore raise many types; translated here, once
        raise storage_error(url, "delete", exc) from exc


def move(url: str, to: str) -> None:
    """Rename one file (on S3: copy, then delete the original; nothing is lost if it stops between).

    Raises:
        StorageError: the file is missing or cannot be moved.
    """
    if not is_remote(url):
        try:
            Path(to).parent.mkdir(parents=True, exist_ok=True)
            os.replace(url, to)
        except OSError as exc:
            raise storage_error(url, "move", exc) from exc
        return
    fs, path = filesystem(url)
    _, dest = filesystem(to)
    try:
        fs.mv(path, dest)
    except Exception as exc:  # botocore/aiobotocore raise many types; translated here, once
        raise storage_error(url, "move", exc) from exc


def exists(url: str) -> bool:
    """True if a file exists at ``url``."""
    if not is_remote(url):
        return Path(url).exists()
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except Exception as exc:
        raise storage_error(url, "check", exc) from exc


def version(url: str) -> str | None:
    """A cheap marker of the file's current content, read without reading the file; None when no file
    is there (nothing, or a directory).

    Locally its size, modification time and inode (a write renames a new file into place, so even a
    rewrite within one tick of the clock changes the inode); on S3 the object's ETag and size, from a
    HEAD request (never a listing cached by s3fs, which may be older than the object). Equal markers
    mean the same content unless the file was rewritten in place, to the same size, within one tick
    of the file system's clock.

    Raises:
        StorageError: the store cannot be reached or access is denied.
    """
    if not is_remote(url):
        try:
            st = os.stat(url)
        except (FileNotFoundError, NotADirectoryError):  # (a parent that is a file: no file here either)
            return None
        except OSError as exc:
            raise storage_error(url, "check", exc) from exc
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" if stat.S_ISREG(st.st_mode) else None
    fs, path = filesystem(url)
    try:
        info = fs.info(path, refresh=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # botocore/aiobotocore raise many types; translated here, once
        raise storage_error(url, "check", exc) from exc
    if info.get("type") != "file":
        return None
    return f"{info.get('ETag') or ''}:{info.get('size')}"


def list_files(url: str, suffix: str = "") -> list[str]:
    """Files directly under a directory URL whose names end with ``suffix``, sorted."""
    if not is_remote(url):
        p = Path(url)
        if not p.is_dir():
            return []
        return sorted(str(f) for f in p.iterdir() if f.is_file() and f.name.endswith(suffix)
                      and not f.name.startswith("."))
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True) if fs.exists(path) else []
    except Exception as exc:
        raise storage_error(url, "list", exc) from exc
    names = [e["name"] for e in entries if e.get("type") != "directory"]  # (a prefix with objects under it)
    scheme = url.split("://", 1)[0]
    return sorted(f"{scheme}://{n}" for n in names if n.endswith(suffix) and not posixpath.basename(n).startswith("."))


def write_parquet(url: str, df: pl.DataFrame) -> None:
    """Write a frame as parquet atomically."""
    buf = io.BytesIO()
    df.write_parquet(buf)
    write_bytes(url, buf.getvalue())


def read_parquet(url: str) -> pl.DataFrame:
    """Read a parquet file into a frame."""
    if not is_remote(url):
        try:
            return pl.read_parquet(url)
        except (OSError, pl.exceptions.ComputeError) as exc:
            raise storage_error(url, "read parquet", exc) from exc
    return pl.read_parquet(io.BytesIO(read_bytes(url)))
