"""Benchmark 7, fixed cost of a run: a 50-request, one-shard `fmbench run`, wall time minus the shard.

End to end (``fmbench run`` as a user types it, each in its own process, on the simulated endpoint):

* ``fresh``: a new Prefect home and an empty fmbench cache (the Prefect API starts and its database
  is created, the host is calibrated) — what a first run after ``make install`` pays (the install
  compiles the modules' bytecode, as pip does, and has Prefect migrate the database template a new
  home starts from);
* ``again``: the same command once more: the local Prefect API and the host's calibration are
  reused (when the load average is still close to the calibration's);
* ``again_png``: the same with the static PNGs (``--no-png`` is off; needs Chromium);
* ``embedded``: ``FMBENCH_PREFECT_API=embedded`` (Prefect's own per-run server, as before);
* ``again_no_bytecode_cache``: ``again`` where Python may not write its bytecode cache
  (``PYTHONDONTWRITEBYTECODE=1``, as in some sandboxes and containers): every module compiled again.

Every run goes through `benchmarks._run_probe`, which stamps its phases (imports, config and
preflight, the Prefect API, Prefect's import, the flow run's start and end, each task's own work,
the time between tasks, exit handlers and the interpreter's exit): ``breakdown`` of each run.

Fixed overhead = wall time − the shard's measured duration (first send to last answer); target
≤ 10 s when the machine has run fmbench before, ≤ 20 s on a fresh one (issue 17).

Then each part alone, in this process or a child: Python start and CLI imports, Prefect's import,
the embedded Prefect server start (new and existing database) against a reused API's health check,
calibration measured against reused, the simulated endpoint's start, bucketing, the regression
check (as in a run, its trend plots left to the report), the report with and without PNGs (with:
the report's and the trend plots' PNGs, one browser), and the check alone rendering its trend plots.

Run: ``uv run --no-sync python -m benchmarks.run_overhead [--quick]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, parser, write_result
from benchmarks._run_probe import breakdown

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """name: overhead
output: {output}
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {{name: synthetic, source: synthetic, prompts_per_bucket: 16, seed: 0}}
experiments:
  - name: sim
    endpoint: {{provider: simulated, ttft_ms: 80, tpot_ms: 4, output_tokens: 50, max_batch: 16}}
    inference: {{max_tokens: 50, stream: true}}
    concurrency_levels: [4]
    requests_per_level: 50
    warmup_requests: 2
    pricing: {{hourly_usd: 1.0}}
"""


def _fmbench_run(cfg: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    load = loadavg()[0]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        probe_file = Path(f.name)
    t0, spawned = time.monotonic(), time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks._run_probe", str(probe_file), "run", str(cfg), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall, ended = time.monotonic() - t0, time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"fmbench run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = [ln for ln in proc.stdout.splitlines() if ln.startswith("Report: ")][-1][len("Report: "):]
    manifest = json.loads(Path(report).with_name("manifest.json").read_text())
    shard_s = sum(float(s.get("duration_s") or 0.0) for s in manifest["shards"])
    cal = manifest.get("calibration") or {}
    probe = json.loads(probe_file.read_text())
    probe_file.unlink()
    return {"wall_s": round(wall, 2), "shard_s": round(shard_s, 2), "fixed_s": round(wall - shard_s, 2),
            "calibration_reused": bool(cal.get("reused")), "api": _api_line(proc.stderr), "load": load,
            "breakdown": breakdown(probe, spawned, ended, shard_s)}


def _api_line(stderr: str) -> str:
    for ln in stderr.splitlines():
        if "Prefect API:" in ln:
            return "started" if "starting" in ln else "reused"
    return "embedded"


def _child_s(code: str, env: dict[str, str]) -> float:
    """Wall time of ``python -c code`` (process start included)."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return round(time.monotonic() - t0, 2)


_EMBEDDED = """
import time
from prefect.server.api.server import SubprocessASGIServer
t0 = time.monotonic(); s = SubprocessASGIServer(); s.start(); print(time.monotonic() - t0); s.stop()
"""


def _embedded_start_s(env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", _EMBEDDED], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    return round(float(out[-1]), 2)


def _parts(env: dict[str, str], cfg_path: Path, run_dir: str) -> dict[str, float]:
    from fmbench.calibration import cached_calibration, calibrate_host
    from fmbench.datasets.build import build_dataset_prompts, load_run_tokenizer
    from fmbench.pipeline import load_benchmark_config
    from fmbench.regression import check_regressions
    from fmbench.report import render_report
    from fmbench.simulator.process import SimulatedServerProcess

    parts: dict[str, float] = {}
    parts["python_and_cli_imports_s"] = _child_s("import cli.main, fmbench.sequence, fmbench.preflight", env)
    parts["prefect_import_s"] = round(_child_s("import flows.benchmark", env) - parts["python_and_cli_imports_s"], 2)
    fresh_home = dict(env, PREFECT_HOME=tempfile.mkdtemp(prefix="fmbench-bench-home-"))
    parts["embedded_api_start_new_db_s"] = _embedded_start_s(fresh_home)
    parts["embedded_api_start_s"] = _embedded_start_s(fresh_home)
    shutil.rmtree(fresh_home["PREFECT_HOME"], ignore_errors=True)
    t0 = time.monotonic()
    calibrate_host()
    parts["calibration_measured_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    cached_calibration()
    parts["calibration_reused_s"] = round(time.monotonic() - t0, 3)
    cfg = load_benchmark_config(str(cfg_path))
    t0 = time.monotonic()
    with SimulatedServerProcess(cfg.experiments[0].endpoint) as _:
        parts["endpoint_start_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    tok = load_run_tokenizer(cfg)
    parts["tokenizer_load_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    build_dataset_prompts(cfg, cfg.datasets[0], tok)
    parts["bucketing_s"] = round(time.monotonic() - t0, 2)
    for png in (False, True):
        t0 = time.monotonic()
        check_regressions(run_dir, plots=False)  # as in a run: the trend plots are left to the report
        parts["regression_check_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        render_report(run_dir, png=png)  # png: the report's and the trend plots' PNGs, one browser
        parts[f"report{'_png' if png else ''}_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    check_regressions(run_dir, plots=True)  # `check_regressions` alone: the trend plots with a browser of their own
    parts["regression_check_png_alone_s"] = round(time.monotonic() - t0, 2)
    return parts


def _reuse_check_s() -> float:
    """What a run pays for a running local API: read its state and ask its health."""
    from fmbench.localapi import _healthy, _read_state, api_state_dir

    t0 = time.monotonic()
    state = _read_state(api_state_dir() / "state.json") or {}
    ok = bool(state) and _healthy(str(state.get("url")))
    return round(time.monotonic() - t0, 3) if ok else float("nan")


def _installed_bytecode() -> bool:
    """Whether the environment's modules were compiled when installed (Prefect's, as a sample)."""
    import importlib.util

    spec = importlib.util.find_spec("prefect.flows")
    origin = spec.origin if spec else None
    return bool(origin) and Path(importlib.util.cache_from_source(str(origin))).exists()


def main() -> int:
    p = parser(__doc__)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fmbench-bench-overhead-"))
    home, cache = work / "prefect-home", work / "cache"
    home.mkdir()
    # FMBENCH_PREFECT_API_IDLE_S: a killed benchmark leaves its API running for a minute, not 30
    # Bytecode: as the install left it (`make install` compiles every installed module, as pip does);
    # where nothing was compiled and PYTHONDONTWRITEBYTECODE is set, every run compiles every module:
    # measured as again_no_bytecode_cache.
    env = dict(os.environ, PREFECT_HOME=str(home), FMBENCH_CACHE_DIR=str(cache), FMBENCH_PREFECT_API="reuse",
               FMBENCH_PREFECT_API_IDLE_S="60",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PREFECT_API_URL", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    cfg = work / "overhead.yml"
    cfg.write_text(CONFIG.format(output=work / "results"))
    runs: dict[str, Any] = {}
    os.environ.update(PREFECT_HOME=str(home), FMBENCH_CACHE_DIR=str(cache))  # for _parts and stop_local_api
    # The parts measured in this process and its children use the same (by then warm) bytecode cache.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    sys.pycache_prefix, sys.dont_write_bytecode = None, False
    installed_bytecode = _installed_bytecode()
    from fmbench.localapi import db_template, stop_local_api

    template = db_template()

    try:
        runs["fresh"] = _fmbench_run(cfg, env, "--no-png")
        print("fresh", runs["fresh"], flush=True)
        runs["again"] = _fmbench_run(cfg, env, "--no-png")
        print("again", runs["again"], flush=True)
        reuse_check_s = _reuse_check_s()  # now, before the API's idle time runs out
        if not args.quick:
            runs["again_png"] = _fmbench_run(cfg, env)
            print("again_png", runs["again_png"], flush=True)
            runs["embedded"] = _fmbench_run(cfg, dict(env, FMBENCH_PREFECT_API="embedded"), "--no-png")
            print("embedded", runs["embedded"], flush=True)
            no_cache = dict(env, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(work / "no-pycache"))
            runs["again_no_bytecode_cache"] = _fmbench_run(cfg, no_cache, "--no-png")
            print("again_no_bytecode_cache", runs["again_no_bytecode_cache"], flush=True)
        run_dirs = sorted((work / "results" / "overhead").iterdir())
        parts = _parts(env, cfg, str(run_dirs[-1])) | {"reused_api_check_s": reuse_check_s}
        print("parts", parts, flush=True)
    finally:
        stop_local_api()
        shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, "run_overhead", {
        "quick": args.quick, "runs": runs, "parts": parts,
        "target": {"fixed_s_again": 10.0, "fixed_s_fresh": 20.0},
        "met": {"again": runs["again"]["fixed_s"] <= 10.0, "fresh": runs["fresh"]["fixed_s"] <= 20.0},
        "load_after": loadavg(),
        "prefect_db_template": (f"made at install (make install): {template}" if template.is_file()
                                else "none: the fresh run's Prefect server migrated a new database"),
        "bytecode_cache": ("compiled at install (make install: uv sync --compile-bytecode)" if installed_bytecode
                           else "not compiled at install: the fresh run compiled and wrote it"),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
