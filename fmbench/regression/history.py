"""Finding runs: the successful runs of a benchmark under its output, and the one before a run.

Runs live at ``<output>/<name>/<run_id>/``; a run is successful when its manifest has ``ended_at``
and it has ``metrics.parquet``. Runs are ordered by their manifests' start time.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from fmbench import storage
from fmbench.errors import FMBenchError, StorageError
from fmbench.rundir import has_manifest, load_manifest


def list_run_ids(benchmark_url: str) -> list[str]:
    """Run ids (subdirectories) under ``<output>/<name>``, sorted (oldest first).

    Raises:
        StorageError: the location cannot be listed.
    """
    if not storage.is_remote(benchmark_url):
        p = Path(benchmark_url)
        return sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")) if p.is_dir() else []
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(benchmark_url)
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True) if fs.exists(path) else []
    except Exception as exc:  # s3fs/botocore raise many types; translated here, once
        raise StorageError(f"{benchmark_url}: cannot list runs: {exc.__class__.__name__}: {exc}") from exc
    names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
    return sorted(n for n in names if n and not n.startswith("."))


def is_successful_run(run_url: str) -> bool:
    """True when the run finished (manifest ``ended_at`` set) and has metrics.parquet."""
    if not has_manifest(run_url) or not storage.exists(storage.join(run_url, "metrics.parquet")):
        return False
    try:
        return bool(load_manifest(run_url).ended_at)
    except StorageError:
        return False


def successful_runs(benchmark_url: str, before: str | None = None, limit: int | None = None) -> list[str]:
    """Successful run ids under ``<output>/<name>``, oldest first by their manifests' start time
    (custom run ids such as ``baseline`` sort by time, not name); only runs started before run
    ``before`` if given, and only the last ``limit`` of them."""
    cutoff = (_started_at(storage.join(benchmark_url, before)), before) if before is not None else None
    found: list[tuple[tuple[str, str], str]] = []
    for rid in list_run_ids(benchmark_url):
        url = storage.join(benchmark_url, rid)
        if rid == before or not is_successful_run(url):
            continue
        key = (_started_at(url), rid)
        if cutoff is not None and key >= cutoff:
            continue
        found.append((key, rid))
    ids = [rid for _, rid in sorted(found)]
    return ids[-limit:] if limit else ids


def _started_at(run_url: str) -> str:
    try:
        return str(load_manifest(run_url).started_at or "")
    except FMBenchError:
        return ""


def find_previous_run(run_url: str) -> str | None:
    """The URL of the previous successful run of the same benchmark under the same output, or None."""
    parent, rid = split_run_url(run_url)
    previous = successful_runs(parent, before=rid, limit=1)
    return storage.join(parent, previous[0]) if previous else None


def split_run_url(run_url: str) -> tuple[str, str]:
    """``(benchmark URL, run id)`` of a run URL."""
    if storage.is_remote(run_url):
        trimmed = run_url.rstrip("/")
        return posixpath.dirname(trimmed), posixpath.basename(trimmed)
    p = Path(run_url)
    return str(p.parent), p.name
