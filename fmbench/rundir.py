"""A run directory: where one benchmark run keeps its config, manifest, payloads and records.

Layout of ``<output>/<name>/<run_id>/`` (local directory or ``s3://``)::

    config.yml            the resolved config
    manifest.json         versions, host, hashes, seeds, timing, shard outcomes
    prompts/              bucketed payloads, one parquet per dataset and bucket
    shards/               one records parquet + one result json per measured shard
    requests.parquet      every request of every shard
    metrics.csv/.parquet  one row per shard
    report.md/.html, plots/
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import platform
import secrets
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fmbench import __version__, storage
from fmbench.config import BenchmarkConfig, dump_config, load_config_text
from fmbench.errors import ConfigError

_PACKAGES = ("prefect", "aiohttp", "boto3", "botocore", "sagemaker", "polars", "plotly", "tiktoken", "pydantic")


class RunInfo(BaseModel):
    """Identity and location of one run; small enough to pass between tasks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Benchmark name.")
    run_id: str = Field(description="Run id; reusing it resumes the run.")
    url: str = Field(description="The run directory: local path or s3:// URL.")
    scratch: str = Field(description="Local directory for files written before upload (same as url when local).")
    resumed: bool = Field(default=False, description="True when the run directory already existed.")

    def path(self, *parts: str) -> str:
        """A file of the run, e.g. ``run.path("shards", "x.parquet")``."""
        return storage.join(self.url, *parts)

    def scratch_path(self, *parts: str) -> Path:
        """A local scratch file of the run (for writers that need a real file)."""
        p = Path(self.scratch, *parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def utc_now() -> str:
    """The current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def open_run(cfg: BenchmarkConfig, output: str | None = None, run_id: str | None = None,
             command: str | None = None) -> RunInfo:
    """Create a run directory, or reopen an existing one to resume it.

    Raises:
        ConfigError: resuming a run that was made with a different config.
    """
    out = output or cfg.output
    rid = run_id or new_run_id()
    if not all(c.isalnum() or c in "-_." for c in rid):
        raise ConfigError(f"--run-id {rid!r}: use letters, digits, '-', '_' and '.' only")
    url = storage.join(out, cfg.name, rid)
    if storage.is_remote(url):
        scratch = str(Path(tempfile.gettempdir(), "fmbench-scratch", cfg.name, rid))
    else:
        url = str(Path(url).resolve())
        scratch = url
    run = RunInfo(name=cfg.name, run_id=rid, url=url, scratch=scratch)
    Path(scratch).mkdir(parents=True, exist_ok=True)
    manifest_url = run.path("manifest.json")
    if storage.exists(manifest_url):
        # Compare configs as the current schema reads them, so a resumed run survives new
        # defaulted fields in a newer fmbench.
        old = load_config_text(storage.read_text(run.path("config.yml")), source=run.path("config.yml"))
        if old.config_hash() != cfg.config_hash():
            diff = _first_difference(old.model_dump(mode="json", exclude={"base_dir"}),
                                     cfg.model_dump(mode="json", exclude={"base_dir"}))
            raise ConfigError(
                f"run {rid} exists with a different config ({diff}); resume it with the same config "
                "or start a new run without --run-id"
            )
        storage.remove_orphaned_temp_files(url)  # left by a writer killed mid-write
        return run.model_copy(update={"resumed": True})
    storage.write_text(run.path("config.yml"), dump_config(cfg))
    write_manifest(run, _initial_manifest(cfg, run, command))
    return run


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or 'config'} differs"


def _initial_manifest(cfg: BenchmarkConfig, run: RunInfo, command: str | None) -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "name": cfg.name,
        "run_id": run.run_id,
        "tool_version": __version__,
        "python": sys.version.split()[0],
        "packages": packages,
        "host": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "user": _safe_user(),
        },
        "config_hash": cfg.config_hash(),
        "tokenizer": cfg.tokenizer,
        "seeds": {d.name: getattr(d, "seed", None) for d in cfg.datasets},
        "started_at": utc_now(),
        "ended_at": None,
        "command": command or f"fmbench run config.yml --run-id {run.run_id}",
        "storage": run.url,
        "payload_hashes": {},
        "shards": [],
    }


def _safe_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user database entry in some containers
        return None


def read_manifest(run: RunInfo) -> dict[str, Any]:
    """The run's manifest."""
    return json.loads(storage.read_text(run.path("manifest.json")))


def write_manifest(run: RunInfo, manifest: dict[str, Any]) -> None:
    """Replace the run's manifest (atomically)."""
    storage.write_text(run.path("manifest.json"), json.dumps(manifest, indent=2, sort_keys=False, default=str))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes (payload hashes in the manifest)."""
    return hashlib.sha256(data).hexdigest()
