"""The one exception tree of fmbench.

Every error a user can cause or meet is one of these, so the CLI can print one clear line::

    FMBenchError
     ├── ConfigError            bad YAML, unknown key, wrong type, contradiction
     ├── DatasetError           missing/invalid dataset file, template field, empty bucket
     ├── TokenizerError         unknown or unloadable tokenizer
     ├── EndpointError          talking to an endpoint failed
     │    ├── EndpointTimeout   no answer within the request timeout
     │    ├── EndpointHTTPError the endpoint answered with an HTTP error status
     │    │    └── EndpointThrottled  429 / ThrottlingException
     │    ├── EndpointConnectionError  refused, reset or unreachable
     │    └── EndpointProtocolError    an answer we cannot parse
     ├── DeploymentError        deploying or tearing down an endpoint failed
     ├── EvaluationError        an evaluation is incomplete (a judge gave no verdict at all)
     └── StorageError           reading or writing results failed

Outside the tree, `RunTerminated` (a `KeyboardInterrupt`) is how SIGTERM stops a run: every path
that stops cleanly on Ctrl-C (teardown included) then does so on SIGTERM too.
"""

from __future__ import annotations


class FMBenchError(Exception):
    """Raised for any error fmbench reports to the user as one line."""


class ConfigError(FMBenchError):
    """Raised when a benchmark config is unreadable, invalid or contradictory."""


class DatasetError(FMBenchError):
    """Raised when a dataset cannot be read, rendered or bucketed."""


class TokenizerError(FMBenchError):
    """Raised when a tokenizer name or file cannot be loaded."""


class EndpointError(FMBenchError):
    """Raised when a request to an endpoint fails; `kind` names the error class in records."""

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
    """Raised when a connection is refused, reset or dropped mid-answer."""

    kind = "connection"


class EndpointProtocolError(EndpointError):
    """Raised when an endpoint's answer cannot be parsed (bad JSON, truncated stream, no tokens)."""

    kind = "protocol"


class DeploymentError(FMBenchError):
    """Raised when deploying, waiting for or tearing down an endpoint fails."""


class EvaluationError(FMBenchError):
    """Raised when an experiment's evaluation is incomplete (its outcome.json says what is missing)."""


class StorageError(FMBenchError):
    """Raised when results cannot be read from or written to a local path or S3."""


class RunTerminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives while a run is in progress."""
