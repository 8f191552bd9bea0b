"""``fmbench run`` with a timeline of where its wall time goes, for `benchmarks.run_overhead`.

Run as ``python -m benchmarks._run_probe OUT.json run CONFIG ...``: the CLI runs unchanged, while
this wrapper stamps (``time.time()``) its start, the local Prefect API's lease, Prefect's import,
the flow function's entry and return, each task function's start and end (the library work inside
a Prefect task run), and the end of ``main``; an exit handler stamps the interpreter's exit (it runs
before the program's own last handler, after Prefect's). The
parent turns the stamps into the breakdown (`breakdown`). Nothing here changes what a run does.
"""

from __future__ import annotations

import time

T_START = time.time()  # first, before any import

import atexit
import contextlib
import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_EVENTS: list[tuple[str, float, float]] = []  # (name, start, end), time.time()
_STAMPS: dict[str, float] = {"probe_start": T_START}
_LOCK = threading.Lock()


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                _EVENTS.append((name, t0, time.time()))
    return wrapper


def _patch_tasks() -> None:
    """Time the function inside every fmbench Prefect task (the library work of the task run)."""
    import flows.benchmark
    import tasks.artifacts
    import tasks.benchmark
    import tasks.calibration
    import tasks.regression

    for mod in (tasks.benchmark, tasks.calibration, tasks.regression, tasks.artifacts):
        for value in vars(mod).values():
            if hasattr(value, "fn") and hasattr(value, "task_key"):
                value.fn = _timed(value.name, value.fn)
    # The flow function's body starts with load-config and ends with publish-artifacts (the flow
    # function itself cannot be wrapped: Prefect reads its signature's annotations).
    first, last = flows.benchmark.load_config_task, flows.benchmark.publish_artifacts_task

    def first_call(*args: Any, **kwargs: Any) -> Any:
        _STAMPS["flow_body_start"] = time.time()
        return first(*args, **kwargs)

    def last_call(*args: Any, **kwargs: Any) -> Any:
        try:
            return last(*args, **kwargs)
        finally:
            _STAMPS["flow_body_end"] = time.time()

    flows.benchmark.load_config_task = first_call
    flows.benchmark.publish_artifacts_task = last_call


def _probe_api(real: Callable[[], Any]) -> Callable[[], Any]:
    @contextlib.contextmanager
    def probed() -> Iterator[Any]:
        _STAMPS["api_enter"] = time.time()  # the config is read; the local API starts (not waited for)
        with real() as api:
            wait = api.wait

            def probed_wait() -> Any:
                # the CLI checked its input and imported Prefect and the flow while the API came up
                _STAMPS["prefect_imported"] = time.time()
                _patch_tasks()  # flows.benchmark is imported by now: only its names are wrapped
                try:
                    return wait()
                finally:
                    _STAMPS["api_ready"] = time.time()

            api.wait = probed_wait
            yield api
            _STAMPS["flow_returned"] = time.time()
    return probed


def main() -> int:
    out = sys.argv[1]
    import cli.main
    import fmbench.localapi

    _STAMPS["cli_imported"] = time.time()
    fmbench.localapi.local_prefect_api = _probe_api(fmbench.localapi.local_prefect_api)

    def dump() -> None:
        _STAMPS["exit"] = time.time()
        with open(out, "w") as f:
            json.dump({"stamps": _STAMPS, "events": _EVENTS}, f)

    sys.argv = ["fmbench", *sys.argv[2:]]
    real_main = cli.main.main

    def main_then_stamp(argv: Any = None) -> int:
        # after the program's exit handler, before Prefect's: runs after theirs, before the program's
        atexit.register(dump)
        try:
            return real_main(argv)
        finally:
            _STAMPS["main_returned"] = time.time()

    cli.main.main = main_then_stamp
    cli.main.program()  # the program's own exit (it skips the interpreter's teardown)
    return 0


def breakdown(probe: dict[str, Any], spawned: float, ended: float, shard_s: float) -> dict[str, float]:
    """Seconds per phase of one probed run (``spawned``/``ended``: the parent's ``time.time()``)."""
    s = probe["stamps"]
    events = sorted(probe["events"], key=lambda e: e[1])
    flow = ("flow", s["flow_body_start"], s["flow_body_end"]) if "flow_body_end" in s else None
    tasks = events
    out: dict[str, float] = {
        "python_start_s": s["probe_start"] - spawned,
        "cli_imports_s": s["cli_imported"] - s["probe_start"],
        "config_s": s["api_enter"] - s["cli_imported"],
        # preflight and imports overlap the local Prefect API's start; then the run waits for what is left
        "preflight_and_prefect_import_s": s["prefect_imported"] - s["api_enter"],
        "prefect_api_wait_s": s["api_ready"] - s["prefect_imported"],
    }
    if flow is not None:
        out["flow_run_start_s"] = flow[1] - s["api_ready"]
        out["flow_run_end_s"] = s["flow_returned"] - flow[2]
        # Inside the flow function: time in task functions (merged where tasks overlap) and the rest,
        # which is Prefect's task-run bookkeeping plus the sequence's own code between tasks.
        busy, cursor = 0.0, flow[1]
        for name, t0, t1 in tasks:
            start = max(t0, cursor)
            if t1 > start:
                busy += t1 - start
                cursor = t1
            key = f"task_{name.replace('-', '_')}_s"
            out[key] = out.get(key, 0.0) + (t1 - t0)
        out["between_tasks_s"] = (flow[2] - flow[1]) - busy
    out["after_flow_s"] = s["main_returned"] - s["flow_returned"]
    out["exit_handlers_s"] = s["exit"] - s["main_returned"]
    out["interpreter_exit_s"] = ended - s["exit"]
    out["shard_measured_s"] = shard_s
    return {k: round(v, 3) for k, v in out.items()}


if __name__ == "__main__":
    sys.exit(main())
