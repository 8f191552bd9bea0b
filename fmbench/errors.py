"""The one exception tree of fmbench, and the exit code each kind of error ends the command line with.

Every error a user can cause or meet is one of these, so the CLI can print one clear line; each
class carries its `ExitCode` (bad input 2, environment 3), and `exit_code` maps any exception::

    FMBenchError                              exit 3 (environment) unless a subclass says otherwise
     ├── ConfigError            exit 2       bad YAML, unknown key, wrong type, contradiction
     ├── DatasetError           exit 2       missing/invalid dataset file, template field, empty bucket
     ├── TokenizerError         exit 2       unknown or unloadable tokenizer
     ├── CredentialsError       exit 3       AWS credentials missing, expired or refused; unknown profile
     ├── EndpointError          exit 3       talking to an endpoint failed
     │    ├── EndpointTimeout   no answer within the request timeout
     │    ├── EndpointHTTPError the endpoint answered with an HTTP error status
     │    │    └── EndpointThrottled  429 / ThrottlingException
     │    ├── EndpointConnectionError  refused, reset or unreachable
     │    └── EndpointProtocolError    an answer we cannot parse
     ├── DeploymentError        exit 3       deploying or tearing down an endpoint failed
     ├── EvaluationError        exit 1       an evaluation is incomplete (a judge gave no verdict at all)
     └── StorageError           exit 3       reading or writing results failed

Any other exception is a bug (exit 4). A run that finished but lost shards exits 1; Ctrl-C 130.
Outside the tree, `RunTerminated` (a `KeyboardInterrupt`) is how SIGTERM stops a run (exit 143), and
SIGHUP, the terminal hanging up (exit 129): every path that stops cleanly on Ctrl-C (teardown
included) then does so on those too.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    """What the ``fmbench`` command exits with, by cause (README, "Exit codes")."""

    OK = 0
    PARTIAL_FAILURE = 1  # finished, but some shards (run), evaluations (evaluate) or deletions (cleanup) failed
    BAD_INPUT = 2  # the config, a dataset, a tokenizer or the command line is wrong
    ENVIRONMENT = 3  # an endpoint, credentials, a deployment or storage failed: the world outside the input
    INTERNAL = 4  # an exception outside the tree: a bug in fmbench
    HUNG_UP = 129  # SIGHUP: the terminal hung up (128 + SIGHUP)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class FMBenchError(Exception):
    """Raised for any error fmbench reports to the user as one line."""

    exit_code = ExitCode.ENVIRONMENT


class ConfigError(FMBenchError):
    """Raised when a benchmark config is unreadable, invalid or contradictory."""

    exit_code = ExitCode.BAD_INPUT


class RunInProgress(ConfigError):
    """Raised when a run is held by another process (in progress there): what it holds is its own."""


class DatasetError(FMBenchError):
    """Raised when a dataset cannot be read, rendered or bucketed."""

    exit_code = ExitCode.BAD_INPUT


class TokenizerError(FMBenchError):
    """Raised when a tokenizer name or file cannot be loaded."""

    exit_code = ExitCode.BAD_INPUT


class CredentialsError(FMBenchError):
    """Raised when AWS credentials are missing, expired or refused, or a named profile does not exist."""

    exit_code = ExitCode.ENVIRONMENT


class EndpointError(FMBenchError):
    """Raised when a request to an endpoint fails; `kind` names the error class in records."""

    exit_code = ExitCode.ENVIRONMENT

    kind = "endpoint"
    #: Times the client sent the request again on a new connection because the pooled one had
    #: been closed by the server before it read the request (a client event, not this error).
    resends = 0


class EndpointTimeout(EndpointError):
    """Raised when an endpoint does not answer within the request timeout."""

    kind = "timeout"


class EndpointHTTPError(EndpointError):
    """Raised when an endpoint answers with an HTTP error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.status is not None and self.status >= 500:
            return "server_error"
        return "client_error"


class EndpointThrottled(EndpointHTTPError):
    """Raised when an endpoint refuses a request for rate (HTTP 429, ThrottlingException)."""

    def __init__(self, message: str, status: int | None = 429, retry_after_s: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "throttled"


class EndpointConnectionError(EndpointError):
    """Raised when a connection is refused, reset or dropped before an answer began; one dropped after
    is the answer cut off, an `EndpointProtocolError` (`answer_cut_off`, in every client: Bedrock's
    non-streamed Converse, read whole inside botocore, cannot tell the two apart and says connection)."""

    kind = "connection"


#: In the message of a timeout before any byte of the answer arrived: the endpoint took the request
#: and said nothing (hung, stopped, or far past its capacity), as opposed to an answer that was slow.
NO_ANSWER_BYTE = "no byte of an answer"


def silent_timeout(kind: str | None, message: str | None) -> bool:
    """Whether a record's error is a timeout with no byte of an answer (`NO_ANSWER_BYTE`)."""
    return kind == "timeout" and NO_ANSWER_BYTE in (message or "")


class EndpointHung(EndpointConnectionError):
    """Raised for a shard whose endpoint took its requests but answered none of a run of them, each
    waiting out the request timeout: the shard stopped sending, and its attempt is set aside like
    one whose endpoint was lost (`fmbench.pipeline.shards.hung_endpoint`)."""


class EndpointProtocolError(EndpointError):
    """Raised when an endpoint's answer cannot be parsed (bad JSON, truncated stream, no tokens)."""

    kind = "protocol"


class DeploymentError(FMBenchError):
    """Raised when deploying, waiting for or tearing down an endpoint fails."""

    exit_code = ExitCode.ENVIRONMENT


class EvaluationError(FMBenchError):
    """Raised when an experiment's evaluation is incomplete (its outcome.json says what is missing)."""

    exit_code = ExitCode.PARTIAL_FAILURE  # the rest of the run stands, like a run that lost shards


class StorageError(FMBenchError):
    """Raised when results cannot be read from or written to a local path or S3."""

    exit_code = ExitCode.ENVIRONMENT


class RunTerminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM, or SIGHUP (``signum``), arrives while a run is in progress."""

    def __init__(self, message: str = "terminated (SIGTERM)", signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum


def answer_cut_off(err: EndpointError, begun: bool, what: str = "") -> EndpointError:
    """The error a request failed with, once it is known whether its answer had begun (every client's one rule).

    A connection that breaks after the answer began is the endpoint cutting its answer off: an
    `EndpointProtocolError`, counted in the error rate like a stream that never ends, not a failure to
    connect (which a shard reads as the endpoint being down, `fmbench.pipeline.shards`). Any other
    error, or one before the answer began, is returned as it is.

    Args:
        err: The error the client translated the failure to.
        begun: Whether the answer had begun (a byte of it, or its status and headers, had arrived).
        what: The call that ``err``'s message starts with (``"{what}: ..."``), kept first in the new one.
    """
    if not begun or type(err) is not EndpointConnectionError:
        return err
    if what:
        return EndpointProtocolError(f"{what}: answer cut off ({str(err).removeprefix(f'{what}: ')})")
    return EndpointProtocolError(f"answer cut off: {err}")


def exit_code(exc: BaseException) -> ExitCode:
    """The exit code an exception ends the command line with: the one place causes become codes.

    SIGTERM arrives as `RunTerminated` or, inside a Prefect flow, as Prefect's ``TerminationSignal``
    (recognised by its ``signal`` attribute: the library does not import Prefect); SIGHUP as
    `RunTerminated` only.
    """
    if isinstance(exc, RunTerminated):
        return ExitCode.HUNG_UP if exc.signum == signal.SIGHUP else ExitCode.TERMINATED
    if getattr(exc, "signal", None) == signal.SIGTERM:
        return ExitCode.TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, FMBenchError):
        return exc.exit_code
    return ExitCode.INTERNAL
