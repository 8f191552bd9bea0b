"""A helper child process fed job files through its stdin, stopped with all it started on every way out.

The report's PNG children (`fmbench.png`'s browser, `fmbench.report.png_worker`'s drawing) start at
once, so that their imports overlap the parent's work, take job files from a private temporary
directory, and must never outlive the report: not on a deadline, an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


class JobChild:
    """``python -m MODULE ARGS`` in a session of its own, with a temporary directory for job files.

    Args:
        module: the child's module.
        args: its arguments.
        tmp_prefix: the job directory's name prefix.
        descendants: also kill the child's descendants that left its process group (a browser
            started in a session of its own) when it is stopped.
    """

    def __init__(self, module: str, args: list[str], tmp_prefix: str, descendants: bool = False) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=tmp_prefix)
        self._descendants = descendants
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )

    @property
    def tmp(self) -> Path:
        """The directory for job files (removed by `close`)."""
        return Path(self._tmp.name)

    def send(self, line: str, last: bool = False) -> None:
        """Write one line to the child's stdin (``last``: then close it, the child's end of input).

        Raises:
            RuntimeError: the child was already waited for or closed, or its input closed.
        """
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("already used or closed")
        try:
            proc.stdin.write(f"{line}\n")
            if last:
                proc.stdin.close()
            else:
                proc.stdin.flush()
        except BrokenPipeError:  # the child already failed; wait() reports why
            pass
        if last:
            proc.stdin = None

    def wait(self, timeout_s: float, late: str) -> None:
        """Wait for the child to end (its input closed first); killed if still running on any way out.

        Raises:
            TimeoutError: ``late`` (the child did not end within ``timeout_s``; it was killed).
            RuntimeError: the child failed; the message is its last line on stderr.
        """
        proc = self.proc
        if proc is None:
            raise RuntimeError("already used or closed")
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            raise TimeoutError(late) from None
        finally:
            if proc.poll() is None:  # interrupted while waiting: take the child (and what it started) down
                self._stop(proc)
        self.proc = None
        if proc.returncode != 0:
            last = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()][-1:] or [f"exit {proc.returncode}"]
            raise RuntimeError(last[0][:300])

    def close(self) -> None:
        """Stop the child if it still runs; remove the job files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            self._stop(proc)
        self._tmp.cleanup()

    def _stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            tree = []
            if self._descendants:
                import psutil  # here: most reports start no browser, and psutil takes 0.05 s to import

                # e.g. choreographer starts the browser in a session of its own, out of the child's
                # process group: it is found among the child's descendants, or it would outlive it.
                with contextlib.suppress(psutil.Error):
                    tree = psutil.Process(proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for p in tree:
                with contextlib.suppress(Exception):
                    p.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
