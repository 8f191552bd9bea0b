"""The `fmbench` command line: run, validate, report, evaluate, compare, cleanup, serve-sim.

Errors end as one line on stderr and the exit code of their cause (`fmbench.errors.ExitCode`:
bad input 2, environment 3, a bug 4; `--debug` shows the traceback too). `fmbench run` runs the
Prefect flow with an embedded Prefect server unless PREFECT_API_URL points at one; its last line
is ``Report: <run dir>/report.md``, and it exits 1 when some shard failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fmbench.errors import ExitCode, FMBenchError, exit_code
from fmbench.interrupts import say

if TYPE_CHECKING:
    from fmbench.config import BenchmarkConfig
    from fmbench.deploy.inventory import FmbenchResource
    from fmbench.localapi import LocalApi

log = logging.getLogger("fmbench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmbench", description="Benchmark foundation-model endpoints.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's own logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a benchmark config (as a Prefect flow)")
    r.add_argument("config", help="YAML config file (or s3:// URL)")
    r.add_argument("--output", help="results directory or s3://bucket/prefix (default: the config's)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. experiments.0.concurrency_levels=[1,2]")
    r.add_argument("--run-id", help="run id; an existing run id resumes that run")
    r.add_argument("--no-png", dest="png", action="store_false",
                   help="skip the static PNG plots (report.html keeps its interactive figures)")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="check a config without running it")
    v.add_argument("config")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    rep = sub.add_parser("report", help="re-render a run's report from its stored records")
    rep.add_argument("run_dir", help="run directory or s3:// URL")
    rep.add_argument("--no-png", dest="png", action="store_false",
                     help="skip the static PNG plots (no browser is started)")
    rep.add_argument("--partial", action="store_true",
                     help="an unfinished run: report the shards it measured so far, in RUN_DIR/partial/")
    rep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    ev = sub.add_parser("evaluate", help="score and judge the answers of a finished run, then re-render its report")
    ev.add_argument("run_dir", help="run directory or s3:// URL (the run must have kept its answers: store_text)")
    ev.add_argument("--config", help="a config whose evaluation section and slo.min_accuracy replace the run's")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override the run's config, e.g. evaluation.evaluate_per_shard=50")
    ev.add_argument("--no-png", dest="png", action="store_false",
                    help="skip the report's static PNG plots (no browser is started)")
    ev.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    cmp_ = sub.add_parser("compare", help="compare several runs in one report")
    cmp_.add_argument("runs", nargs="+", help="run directories or s3:// URLs")
    cmp_.add_argument("--output", required=True, help="where the comparison report goes")
    cmp_.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    c = sub.add_parser("cleanup", help="list (and with --yes delete) SageMaker resources fmbench left running")
    c.add_argument("config", nargs="?", help="a config: its SageMaker experiments' regions are searched")
    c.add_argument("--region", help="AWS region to search (instead of, or besides, the config's)")
    c.add_argument("--profile", help="AWS profile (default: the config's, else the standard chain)")
    c.add_argument("--run-id", help="only resources of this run id")
    c.add_argument("--config-name", help="only resources of this benchmark name (default with CONFIG: its `name`)")
    c.add_argument("--any-config", action="store_true",
                   help="with CONFIG: resources of every benchmark name in its regions, not only its own")
    c.add_argument("--older-than", metavar="AGE", help="only resources older than AGE, e.g. 90m, 2h, 3d")
    c.add_argument("--yes", action="store_true", help="delete what is listed (default: only list)")
    c.add_argument("--include-live", action="store_true",
                   help="delete the resources of runs in progress too (default: leave them to their runs)")
    c.add_argument("--no-png", dest="png", action="store_false",
                   help="when a run's report is rendered again with its endpoints' full cost, skip its PNG plots")
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = sub.add_parser("serve-sim", help="serve the simulated endpoint (OpenAI-compatible) until stopped")
    from fmbench.simulator.cli import add_cli_arguments

    add_cli_arguments(s)
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was when the handler was
    made: a notebook or a test that swaps stderr (and closes the old one) still gets the lines."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # (set by StreamHandler.__init__ and setStream: always sys.stderr)


def _setup_logging(debug: bool) -> None:
    # One handler: `main` called again in one process (a notebook, a test) would otherwise print
    # every line once per call.
    for old in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    if not debug:
        # Prefect's own console logs (task states, tracebacks) are for --debug; our lines say enough.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        # Likewise Dask's (FMBENCH_TASK_RUNNER=dask): a cluster's start and close are some fifty INFO
        # lines, in this process and in the workers it spawns (they inherit the variable). Errors stay.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def cmd_run(args: argparse.Namespace) -> int:
    from fmbench.localapi import local_prefect_api
    from fmbench.pipeline import load_benchmark_config
    from fmbench.sequence import check_before_run

    cfg = load_benchmark_config(args.config, overrides=args.overrides)  # a bad config starts no server
    command = "fmbench run " + " ".join(
        [shlex.quote(args.config)]
        + [f"--set {shlex.quote(o)}" for o in args.overrides]
        + ([f"--output {shlex.quote(args.output)}"] if args.output else [])
        + ([f"--run-id {shlex.quote(args.run_id)}"] if args.run_id else [])
        + ([] if args.png else ["--no-png"])
    )
    # The local Prefect API starts now (before Prefect is imported: it reads PREFECT_API_URL at
    # import) and comes up while the run checks its input and imports Prefect and the flow.
    with local_prefect_api() as api:
        check_before_run(cfg, args.output, args.run_id)  # bad input fails here, before any Prefect call
        from flows.benchmark import benchmark
        from fmbench.live import show_progress

        with _prefect_api_ready(api), show_progress(sys.stderr):
            report = benchmark(config=args.config, output=args.output, run_id=args.run_id,
                               overrides=args.overrides or None, command=command, preflight=False,
                               png=args.png)
    report = str(report)  # the flow returns the report's URL
    failed = _failed_shards(report)
    for line in failed:
        say(f"fmbench: shard failed: {line}", sys.stderr)
    say(f"Report: {report}")
    return ExitCode.PARTIAL_FAILURE if failed else ExitCode.OK


def _prefect_api_ready(api: LocalApi) -> contextlib.AbstractContextManager[object]:
    """Wait for the run's local Prefect API; when it did not come up, run on Prefect's embedded server."""
    if api.wait() is not None or not api.started:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(restore_defaults={PREFECT_API_URL})  # Prefect read the URL at import


def _failed_shards(report_url: str) -> list[str]:
    from fmbench.rundir import load_manifest

    try:
        manifest = load_manifest(report_url.rsplit("/", 1)[0] if "/" in report_url else ".")
    except FMBenchError:
        return []
    return [f"{s['shard_id']}: {s.get('error')}" for s in manifest.shards if s.get("status") == "failed"]


def cmd_validate(args: argparse.Namespace) -> int:
    from fmbench.pipeline import check_dataset_files, config_source_label, load_benchmark_config

    cfg = load_benchmark_config(args.config, overrides=args.overrides)
    check_dataset_files(cfg, config_source_label(str(args.config)))
    shards = 0
    for e in cfg.experiments:
        levels = len(e.concurrency_levels or []) + len(e.request_rates or [])
        shards += levels * len(cfg.buckets) * len(cfg.datasets_for(e))
    say(f"{args.config}: OK ({len(cfg.experiments)} experiments, {len(cfg.datasets)} datasets, "
        f"{len(cfg.buckets)} buckets, up to {shards} shards)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmbench.report import render_report

    if args.partial:
        from fmbench.pipeline.results import partial_report

        say(f"Partial report: {partial_report(args.run_dir, png=args.png)}")
        return 0
    paths = render_report(args.run_dir, png=args.png)
    say(f"Report: {getattr(paths, 'markdown', paths)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fmbench.quality.finished import evaluate_run_dir

    outcomes = evaluate_run_dir(args.run_dir, config=args.config, overrides=args.overrides, png=args.png)
    incomplete = 0
    for name, o in outcomes.items():
        if o is None or o.status == "failed":
            incomplete += 1
            say(f"{name}: not evaluated{f' ({o.error})' if o is not None else ''}")
            continue
        missing = f"; missing: {'; '.join(o.missing)}" if o.missing else ""
        incomplete += bool(o.missing)
        say(f"{name}: {o.scored} answers scored, {o.judged} judged, {o.judge_errors} judge errors, "
            f"{o.unparseable} unparseable verdicts{missing}")
    say(f"Report: {args.run_dir.rstrip('/')}/report.md")
    return ExitCode.PARTIAL_FAILURE if incomplete else ExitCode.OK


def cmd_compare(args: argparse.Namespace) -> int:
    from fmbench.report import compare_runs

    paths = compare_runs(args.runs, args.output)
    say(f"Report: {getattr(paths, 'markdown', paths)}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from fmbench.config import SageMakerEndpoint
    from fmbench.deploy.inventory import (
        delete_resources,
        hourly_total,
        list_fmbench_resources,
        parse_age,
        runs_in_progress,
        sagemaker_client,
    )
    from fmbench.errors import ConfigError
    from fmbench.rundir import utc_now

    older = parse_age(args.older_than) if args.older_than else None
    if args.any_config and (args.config_name or not args.config):
        raise ConfigError("--any-config goes with a CONFIG and without --config-name")
    places: list[tuple[str | None, str | None, str | None]] = []
    cfg: BenchmarkConfig | None = None
    config_name = args.config_name
    if args.config:
        from fmbench.pipeline import load_benchmark_config

        cfg = load_benchmark_config(args.config)
        if config_name is None and not args.any_config:
            config_name = cfg.name  # (another config's runs are not this config's to clean up)
        places = [(e.endpoint.region, args.profile or e.endpoint.profile, e.endpoint.endpoint_url)
                  for e in cfg.experiments if isinstance(e.endpoint, SageMakerEndpoint)]
        if not places and not args.region:
            raise ConfigError(f"{args.config}: no SageMaker experiments, so no region to search; give --region")
    if args.region or not places:
        places.append((args.region, args.profile, None))
    failed = False
    searched: set[tuple[str, str | None]] = set()
    for region, profile, url in dict.fromkeys(places):
        client, region = sagemaker_client(region, profile, url)
        if (region, url) in searched:
            continue
        searched.add((region, url))
        found = list_fmbench_resources(client, region, run_id=args.run_id, config_name=config_name,
                                       older_than_s=older)
        live = runs_in_progress(found)
        hourly, unpriced = hourly_total(found)
        price = f"${hourly:,.2f}/h" + (f" plus {unpriced} unpriced" if unpriced else "")
        endpoints = sum(1 for r in found if r.kind == "endpoint")
        say(f"{region}: {len(found)} fmbench resource(s), {endpoints} endpoint(s) billing {price}"
            + (f", of which {len(live)} run(s) in progress" if live else ""))
        for line in _resource_lines(found, live):
            say("  " + line)
        stored = _stored_runs(cfg, found)
        for (name, rid), where in stored.items():
            if isinstance(where, str):
                say(f"  run {rid}{f' of {name!r}' if name else ''} is stored at {where}")
        for (name, rid), holder in live.items():
            say(f"  run {rid}{f' of {name!r}' if name else ''} is in progress ({holder}): "
                + ("its resources are deleted as well (--include-live)" if args.include_live else
                   "its resources are left to it, it deletes them when it ends (--include-live deletes them)"))
        if not args.include_live:
            found = [r for r in found if (r.config_name, r.run_id) not in live]
        if not found:
            continue
        if not args.yes:
            say("  (nothing deleted: add --yes to delete these)")
            continue
        removed, failures = delete_resources(client, found)
        deleted_at = utc_now("milliseconds")  # when SageMaker was asked to delete them (each bill ends then)
        for item in removed:
            say(f"  deleted {item}")
        for item in failures:
            say(f"fmbench: could not delete {item}", sys.stderr)
        failed = failed or bool(failures)
        gone = [r for r in found if r.kind == "endpoint" and r.ref in removed]
        if gone:
            failed = _record_deletions(cfg, gone, deleted_at, args.png, stored) or failed
    return ExitCode.PARTIAL_FAILURE if failed else ExitCode.OK


def _run_url(cfg: BenchmarkConfig | None, config_name: str | None, run_id: str, tagged: str | None) -> str | None:
    """Where run ``run_id`` of config ``config_name`` is stored: under ``cfg``'s output, else where this
    host last ran it (`rundir.run_url_on_this_host`: a run given another ``--output``, or cleanup
    without the config), else ``tagged``, the S3 URL its resources' tags name (a run on another
    host); None when none of them holds that run's manifest."""
    from fmbench.deploy.sagemaker import TAG_RUN_ID
    from fmbench.names import check_run_id
    from fmbench.rundir import is_run_of, run_location, run_url_on_this_host

    if config_name is None:
        return None
    if cfg is not None and cfg.name == config_name:
        check_run_id(run_id, given_as=f"its endpoints' tag {TAG_RUN_ID}")  # (fmbench never writes a bad one)
        url, _ = run_location(cfg, None, run_id)
        if is_run_of(url, config_name, run_id):
            return url
    for where in (run_url_on_this_host(config_name, run_id), tagged):
        if where is not None and is_run_of(where, config_name, run_id):
            return where
    return None


def _stored_runs(cfg: BenchmarkConfig | None,
                 found: list[FmbenchResource]) -> dict[tuple[str | None, str], str | FMBenchError]:
    """Where each run that ``found`` belongs to is stored (`_run_url`), or why that cannot be known, for
    the runs found there or failing: the listing names where (each report), the deletion records in
    them what it deleted. A run found nowhere is not in it."""
    tagged: dict[tuple[str | None, str], str | None] = {}
    for r in found:
        if r.run_url or (r.config_name, r.run_id) not in tagged:
            tagged[(r.config_name, r.run_id)] = r.run_url
    stored: dict[tuple[str | None, str], str | FMBenchError] = {}
    for (config_name, run_id), url in tagged.items():
        try:
            where = _run_url(cfg, config_name, run_id, url)
        except FMBenchError as exc:  # (a run id that names no directory: said if its endpoints are deleted)
            stored[(config_name, run_id)] = exc
            continue
        if where is not None:
            stored[(config_name, run_id)] = where
    return stored


def _record_deletions(cfg: BenchmarkConfig | None, endpoints: list[FmbenchResource], deleted_at: str,
                      png: bool, stored: dict[tuple[str | None, str], str | FMBenchError]) -> bool:
    """Record the deletion of endpoints that runs left running in those runs' manifests, and render
    again the reports they have, which then bill each endpoint up to its deletion; True when a run
    could not be updated. ``stored`` says where each run is (`_stored_runs`): under ``cfg``'s output,
    or else where its lock says if it ran on this host (cleanup without the config, another config's
    run, a run given another ``--output``), or else at the S3 URL its endpoints' tags name (a run on
    another host); the runs found in none of them are named."""
    from fmbench import storage
    from fmbench.deploy.heartbeat import this_host
    from fmbench.errors import RunInProgress
    from fmbench.report import render_report
    from fmbench.rundir import record_late_deletions

    by_run: dict[tuple[str | None, str], dict[str, tuple[str, str]]] = {}
    tagged: dict[tuple[str | None, str], str] = {}
    ran_on: dict[tuple[str | None, str], str] = {}  # (the host a run's endpoints say it last ran on)
    for r in endpoints:
        if r.experiment:
            by_run.setdefault((r.config_name, r.run_id), {})[r.experiment] = (r.name, deleted_at)
            if r.run_url:
                tagged[(r.config_name, r.run_id)] = r.run_url
            if r.host:
                ran_on[(r.config_name, r.run_id)] = r.host
    failed = False
    unfound: list[tuple[str | None, str]] = []
    for (config_name, run_id), deleted in by_run.items():
        url = stored.get((config_name, run_id))
        if url is None:
            unfound.append((config_name, run_id))
            continue
        try:
            if isinstance(url, FMBenchError):
                raise url
            if not record_late_deletions(url, run_id, deleted, by="fmbench cleanup"):
                continue  # its own teardown recorded them (or the endpoints are later ones of those names)
        except RunInProgress:  # (deleted with --include-live, or started since it was listed)
            assert isinstance(url, str)  # (raised by record_late_deletions)
            failed = _note_deletions(url, run_id, deleted) or failed
            continue
        except FMBenchError as exc:
            say(f"fmbench: run {run_id}: its manifest does not have its endpoints' deletion: {exc}", sys.stderr)
            failed = True
            continue
        if not storage.exists(storage.join(url, "report.md")):  # killed before its report
            say(f"  run {run_id}: its manifest bills its endpoints up to this deletion; the run ended before its "
                f"report (resume it to finish it: fmbench run CONFIG --run-id {run_id})")
            continue
        try:
            paths = render_report(url, png=png)
        except FMBenchError as exc:
            say(f"fmbench: run {run_id}: its endpoints' deletion is in its manifest, but its report could not be "
                f"rendered again ({exc}); fmbench report {url} renders it", sys.stderr)
            failed = True
            continue
        say(f"  run {run_id}: report with the full cost of its endpoints: {getattr(paths, 'markdown', paths)}")
    where = "under the config's output nor " if cfg is not None else ""
    here = this_host()
    for config_name, run_id in unfound:
        url = tagged.get((config_name, run_id))
        host = ran_on.get((config_name, run_id))
        say(f"  run {run_id}: not found {where}on this host" + (f" (it ran on {host})" if host and host != here else "")
            + (f" nor at {url} (its endpoints' tags)" if url else "")
            + ", so its report counts its endpoints only up to its end"
            + ("" if cfg is not None or url else "; give its config, fmbench cleanup CONFIG --yes, to record "
               "their deletion in it"))
    return failed


def _note_deletions(url: str, run_id: str, deleted: dict[str, tuple[str, str]]) -> bool:
    """Note the deletion of a run's endpoints beside its manifest, which the run in progress holds, for
    its teardown to bill them up to it (`rundir.note_deletion`); True when a note could not be written."""
    from fmbench.rundir import note_deletion

    try:
        for name, when in deleted.values():
            note_deletion(url, name, when, by="fmbench cleanup --include-live, during the run")
    except FMBenchError as exc:
        say(f"fmbench: run {run_id}: in progress; the note of its endpoints' deletion could not be written ({exc}): "
            "its teardown bills them up to when it finds them gone", sys.stderr)
        return True
    say(f"  run {run_id}: in progress; its teardown bills its endpoints up to this deletion (noted in {url})")
    return False


def _resource_lines(found: list[FmbenchResource], live: dict[tuple[str | None, str], str]) -> list[str]:
    if not found:
        return []
    rows = [("KIND", "NAME", "STATUS", "INSTANCES", "AGE", "$/H", "RUN ID", "CONFIG", "EXPERIMENT", "RUN")]
    for r in found:
        instances = f"{r.instance_count or 1} x {r.instance_type}" if r.instance_type else ""
        rows.append((r.kind, r.name, r.status or "", instances, _age(r.age_s()),
                     "" if r.kind != "endpoint" else ("?" if r.hourly_usd is None else f"{r.hourly_usd:,.2f}"),
                     r.run_id, r.config_name or "", r.experiment or "",
                     "in progress" if (r.config_name, r.run_id) in live else "ended"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def cmd_serve_sim(args: argparse.Namespace) -> int:
    from fmbench.simulator.cli import run

    return run(args, prog="fmbench")


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "cleanup": cmd_cleanup,
    "serve-sim": cmd_serve_sim,
}


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a run that does
    not end (or ignores a Ctrl-C) is waiting, without stopping it."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1") and sys.stderr is not None:
        try:
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        except (ValueError, OSError, RuntimeError, AttributeError):  # no usable stderr file descriptor
            pass


def _honour_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt even when fmbench was started with it ignored.

    A non-interactive shell starts its background jobs (`fmbench run ... &` in a script, many CI
    runners) with SIGINT ignored, and Python then installs no handler: `kill -INT` would be lost
    and a run could go on billing its endpoints. A run that creates cloud resources must stop and
    delete them on any interrupt it is sent, so the CLI takes SIGINT back.
    """
    import signal

    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fmbench` command."""
    args = _parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    _setup_logging(debug)
    _stacks_on_sigusr1()
    _honour_sigint()
    from fmbench.interrupts import termination_interrupts
    from fmbench.settings import check_environment

    try:
        # Every command: `run` and `evaluate` deploy endpoints, and SIGTERM or a hung-up terminal must
        # stop them the way Ctrl-C does (deleting what they created), not end the process on the spot.
        with termination_interrupts():
            check_environment()  # a bad FMBENCH_* value is refused before anything starts
            return int(_COMMANDS[args.command](args))
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        code = exit_code(exc)
        if debug:
            traceback.print_exc()
        if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED, ExitCode.HUNG_UP):
            how = {ExitCode.TERMINATED: "terminated", ExitCode.HUNG_UP: "hung up"}.get(code, "interrupted")
            kept = "; measured shards are kept in the run directory (resume with --run-id)" \
                if args.command == "run" else ""  # the others measure nothing to resume
            say(f"fmbench: {how}{kept}", sys.stderr)
        elif code == ExitCode.INTERNAL:
            if not debug:
                traceback.print_exc()
            say(f"fmbench: internal error (a bug in fmbench, please report it): {type(exc).__name__}: {exc}",
                sys.stderr)
        else:
            say(f"fmbench: error: {exc}", sys.stderr)
        return int(code)


def program() -> None:
    """The `fmbench` program (console script, ``python -m fmbench``): `main`, then an exit that skips
    the interpreter's teardown of every module and object (over a second on a busy 2-core machine
    after a run has loaded Prefect).

    Every exit handler still runs (endpoint servers stopped, Prefect's clients flushed, temporary
    directories removed) and so does the join of non-daemon threads: the exit below is itself the
    first-registered handler, so it runs last, after logging and stdio are flushed. Tests call `main`
    and keep the ordinary exit.
    """
    import atexit

    code = [int(ExitCode.INTERNAL)]

    def _exit_now() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
                pass
        os._exit(code[0])

    atexit.register(_exit_now)
    try:
        code[0] = main()
    except SystemExit:  # --help, a usage error: the ordinary exit, with its own code and message
        atexit.unregister(_exit_now)
        raise
    sys.exit(code[0])


if __name__ == "__main__":  # pragma: no cover
    program()
