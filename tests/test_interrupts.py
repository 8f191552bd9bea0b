"""`termination_interrupts`: SIGTERM and SIGHUP stop a run the way Ctrl-C does (signals sent to this
process; the command line's behaviour is tested in tests/faults/test_interruptions.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator

import pytest

from fmbench.errors import ExitCode, RunTerminated, exit_code
from fmbench.interrupts import termination_interrupts


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """SIGTERM and SIGHUP at their defaults for the test, and the test runner's back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in saved:
        signal.signal(s, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _raised_by(signum: int) -> RunTerminated:
    with pytest.raises(RunTerminated) as caught:
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the handler runs at the next instruction; the sleep is only a bound
    return caught.value


def test_sigterm_and_sighup_raise_and_a_hang_up_is_taken_once(default_handlers: None) -> None:
    with termination_interrupts():
        hup = _raised_by(signal.SIGHUP)
        # A hang-up often brings a second SIGHUP (the kernel's and the shell's): the clean-up
        # that follows the first one must not be cut short by it.
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        term = _raised_by(signal.SIGTERM)
        term_again = _raised_by(signal.SIGTERM)  # a second SIGTERM is the user insisting
    assert (hup.signum, exit_code(hup)) == (signal.SIGHUP, ExitCode.HUNG_UP) and ExitCode.HUNG_UP == 129
    assert "hung up" in str(hup)
    assert exit_code(term) == exit_code(term_again) == ExitCode.TERMINATED
    # SIGTERM's handler is back; SIGHUP stays ignored after a hang-up (the process is on its way out)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_nohup_and_an_installed_sigterm_handler_are_left_alone(default_handlers: None) -> None:
    seen: list[int] = []
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # started under nohup: the run goes on
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # e.g. Prefect's
    with termination_interrupts():
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    # without a hang-up, both handlers are back as they were
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with termination_interrupts():
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_line_said_to_a_terminal_that_hung_up_or_a_closed_pipe_goes_nowhere_and_other_failures_are_raised(
        ) -> None:
    """`say` (a command's output lines): a terminal that hung up (EIO) or a pipe whose reader exited
    (EPIPE) is pointed at /dev/null, so a run that goes on past it ends as it would have; a write
    that fails otherwise (a full disk: /dev/full) is a failure the caller sees."""
    from fmbench.interrupts import say

    master, terminal = os.openpty()
    out = os.fdopen(os.dup(terminal), "w", encoding="utf-8")
    os.close(terminal)
    try:
        say("before", out)
        assert os.read(master, 100).replace(b"\r", b"") == b"before\n"
        os.close(master)  # the terminal hangs up
        say("after the hang-up", out)  # no error
        assert not os.isatty(out.fileno())
        assert os.path.samefile(f"/proc/self/fd/{out.fileno()}", os.devnull)
        say("and on", out)
    finally:
        out.close()
    read, write = os.pipe()
    piped = os.fdopen(write, "w", encoding="utf-8")
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: EPIPE, not a signal
    try:
        say("read", piped)
        assert os.read(read, 100) == b"read\n"
        os.close(read)  # `fmbench run ... | head -1`: head has exited
        say("nobody reads this", piped)  # no error
        assert os.path.samefile(f"/proc/self/fd/{piped.fileno()}", os.devnull)
    finally:
        signal.signal(signal.SIGPIPE, previous)
        piped.close()
    full = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - its close fails too (what say left buffered)
    with pytest.raises(OSError) as caught:
        say("no room", full)
    assert caught.value.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        full.close()
