"""Exit codes by cause: every error class carries its code, and the real `fmbench` command line
exits with it (one case per class, run with ``--debug`` so the traceback names the class raised)."""

from __future__ import annotations

import inspect
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import _COMMANDS, main
from fmbench import errors
from fmbench.errors import ExitCode, FMBenchError, RunTerminated, exit_code
from tests.faults.test_bad_input import AWS_KEYS, GOOD, _bedrock, _jsonl, _openai, _sagemaker_deploy
from tests.support.cli import ROOT, fmbench_argv
from tests.support.sim_shards import ODD_STATE

#: The code of every class a user can meet; a new class must be added here (and to the README table).
EXPECTED = {
    "FMBenchError": ExitCode.ENVIRONMENT,
    "ConfigError": ExitCode.BAD_INPUT,
    "RunInProgress": ExitCode.BAD_INPUT,
    "DatasetError": ExitCode.BAD_INPUT,
    "TokenizerError": ExitCode.BAD_INPUT,
    "CredentialsError": ExitCode.ENVIRONMENT,
    "EndpointError": ExitCode.ENVIRONMENT,
    "EndpointTimeout": ExitCode.ENVIRONMENT,
    "EndpointHTTPError": ExitCode.ENVIRONMENT,
    "EndpointThrottled": ExitCode.ENVIRONMENT,
    "EndpointConnectionError": ExitCode.ENVIRONMENT,
    "EndpointHung": ExitCode.ENVIRONMENT,
    "EndpointProtocolError": ExitCode.ENVIRONMENT,
    "DeploymentError": ExitCode.ENVIRONMENT,
    "EvaluationError": ExitCode.PARTIAL_FAILURE,
    "StorageError": ExitCode.ENVIRONMENT,
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_error_class_carries_its_exit_code() -> None:
    classes = {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, FMBenchError)}
    assert {name: cls.exit_code for name, cls in classes.items()} == EXPECTED
    for name, cls in classes.items():
        assert exit_code(cls("x")) == EXPECTED[name], name
    assert exit_code(ValueError("a bug")) == ExitCode.INTERNAL == 4
    assert exit_code(KeyboardInterrupt()) == ExitCode.INTERRUPTED == 130
    assert exit_code(RunTerminated()) == ExitCode.TERMINATED == 143
    assert exit_code(RunTerminated("hung up", signal.SIGHUP)) == ExitCode.HUNG_UP == 129
    assert (ExitCode.OK, ExitCode.PARTIAL_FAILURE, ExitCode.BAD_INPUT, ExitCode.ENVIRONMENT) == (0, 1, 2, 3)


def _case(name: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The command line (after ``fmbench --debug``) and extra environment that raise ``name``."""
    cfg = tmp / f"{name}.yml"
    out = tmp / "out"
    texts = {
        "ConfigError": GOOD.replace("name: bad", "name: bad\ncolour: red"),
        "DatasetError": _jsonl("d", "missing.jsonl"),
        "TokenizerError": GOOD.replace("name: bad", "name: bad\ntokenizer: tokenizer.json"),
        "EndpointError": _openai(f"http://127.0.0.1:{_closed_port()}/v1"),
        "CredentialsError": _bedrock(),
        "DeploymentError": _sagemaker_deploy(f"http://127.0.0.1:{_closed_port()}"),
    }
    env = {"DeploymentError": AWS_KEYS}.get(name, {})
    if name == "StorageError":  # a directory with no records in it (no directory at all is a ConfigError)
        (tmp / "empty-run").mkdir()
        return ["report", str(tmp / "empty-run")], env
    if name == "TokenizerError":  # a tokenizer.json that is not one (an unknown name is a ConfigError)
        (tmp / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": 7}')
    cfg.write_text(texts[name].format(out=out))
    return ["validate" if name == "ConfigError" else "run", str(cfg)], env


@pytest.mark.parametrize("name", ["ConfigError", "DatasetError", "TokenizerError", "EndpointError",
                                  "CredentialsError", "DeploymentError", "StorageError"])
def test_the_command_line_exits_with_the_code_of_the_class_raised(
        name: str, tmp_path: Path, fault_cli_env: dict[str, str]) -> None:
    argv, env = _case(name, tmp_path)
    proc = subprocess.run(fmbench_argv("--debug", *argv), env={**fault_cli_env, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    raised = [ln for ln in proc.stderr.splitlines() if ln.startswith("fmbench.errors.")]
    assert raised, proc.stderr[-3000:]
    cls = getattr(errors, raised[-1].split(":", 1)[0].removeprefix("fmbench.errors."))
    assert issubclass(cls, getattr(errors, name)), raised[-1]
    assert proc.returncode == cls.exit_code == EXPECTED[name], proc.stderr[-3000:]
    assert sum(ln.startswith("fmbench: error:") for ln in proc.stderr.splitlines()) == 1, proc.stderr[-3000:]


def test_an_unexpected_exception_is_an_internal_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # No real fmbench bug is at hand to trigger, so a command that fails the way a bug would.
    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(_COMMANDS, "validate", broken)
    assert main(["validate", "any.yml"]) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.rstrip().splitlines()[-1].startswith("fmbench: internal error (a bug in fmbench")


@pytest.mark.parametrize(("command", "args", "last_line"), [
    ("run", ["run", "any.yml"],
     "fmbench: interrupted; measured shards are kept in the run directory (resume with --run-id)"),
    ("serve-sim", ["serve-sim"], "fmbench: interrupted"),  # measures nothing: no resume to offer
])
def test_an_interrupted_command_says_so_and_offers_a_resume_only_for_a_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, args: list[str],
        last_line: str) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(_COMMANDS, command, interrupted)
    assert main(args) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == last_line


def test_a_run_that_lost_shards_writes_its_report_and_exits_1(tmp_path: Path, fault_cli_env: dict[str, str],
                                                              odd_server: str) -> None:
    # The endpoint answers preflight's probe, then drops every connection before answering: the
    # shard fails (after its retries) while the run still finishes.
    ODD_STATE["probed"] = False
    cfg = tmp_path / "lost.yml"
    cfg.write_text(_openai(f"{odd_server}/probed/v1", model="m").format(out=tmp_path / "out"))
    proc = subprocess.run(fmbench_argv("run", str(cfg)), env=fault_cli_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == ExitCode.PARTIAL_FAILURE == 1, proc.stderr[-3000:]
    assert "fmbench: shard failed: e__syn__1-100__c1" in proc.stderr, proc.stderr[-3000:]
    report = proc.stdout.strip().splitlines()[-1].removeprefix("Report: ")
    assert Path(report).is_file()


def test_the_command_line_called_again_in_one_process_logs_each_line_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A notebook (or a test) calls `main` more than once: its log lines go to the stderr of the
    # call, once, not once per earlier call and to streams closed since.
    import logging

    def says(args: object) -> int:
        logging.getLogger("fmbench").info("one line")
        return 0

    monkeypatch.setitem(_COMMANDS, "validate", says)
    for _ in range(3):
        assert main(["validate", "any.yml"]) == 0
        assert capsys.readouterr().err.count("one line") == 1
    # A stderr swapped since (and the old one closed) gets the lines that follow.
    import io

    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("fmbench").info("a later line")
    assert later.getvalue().endswith("a later line\n")
