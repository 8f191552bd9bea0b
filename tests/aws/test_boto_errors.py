"""The one translation of botocore/urllib3 exceptions into fmbench errors is complete."""

from __future__ import annotations

import botocore.eventstream
import botocore.exceptions
import botocore.parsers
import pytest
import urllib3.exceptions

from fmbench.aws import THROTTLING_CODES, client_config, pool_size, translate_client_error
from fmbench.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
)


def _client_error(code: str, status: int | None, **extra: object) -> botocore.exceptions.ClientError:
    response: dict[str, object] = {"Error": {"Code": code, "Message": "msg"}, **extra}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return botocore.exceptions.ClientError(response, "InvokeEndpoint")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", sorted(THROTTLING_CODES))
def test_throttling_codes_are_throttled(code: str) -> None:
    err = translate_client_error(_client_error(code, 400), "ep")
    assert isinstance(err, EndpointThrottled) and err.kind == "throttled" and err.status == 400


@pytest.mark.parametrize(
    ("exc", "cls", "kind", "status"),
    [
        (_client_error("ModelNotReadyException", 429), EndpointThrottled, "throttled", 429),
        (_client_error("ModelError", 424, OriginalStatusCode=503), EndpointHTTPError, "server_error", 503),
        (_client_error("ModelError", 424), EndpointHTTPError, "client_error", 424),
        # the container throttled: SageMaker wraps its 429 in a 424 ModelError
        (_client_error("ModelError", 424, OriginalStatusCode=429), EndpointThrottled, "throttled", 429),
        (AttributeError("'str' object has no attribute 'get'"), EndpointProtocolError, "protocol", None),
        # Bedrock's: the model's own status, the model's own time out
        (_client_error("ModelErrorException", 424, originalStatusCode=500), EndpointHTTPError, "server_error", 500),
        (_client_error("ModelTimeoutException", 408), EndpointTimeout, "timeout", None),
        (_client_error("ValidationError", 400), EndpointHTTPError, "client_error", 400),
        (_client_error("AccessDeniedException", 403), EndpointHTTPError, "client_error", 403),
        (_client_error("InternalFailure", 500), EndpointHTTPError, "server_error", 500),
        (_client_error("ServiceUnavailable", 503), EndpointHTTPError, "server_error", 503),
        (_client_error("modelStreamErrorException", None), EndpointHTTPError, "server_error", 500),
        (_client_error("validationException", None), EndpointHTTPError, "client_error", 400),
        (_client_error("ModelStreamError", None), EndpointHTTPError, "server_error", 500),
        (_client_error("throttlingException", None), EndpointThrottled, "throttled", 429),
        (botocore.exceptions.EventStreamError({"Error": {"Code": "ThrottlingException", "Message": "m"}}, "Op"),
         EndpointThrottled, "throttled", 429),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), EndpointTimeout, "timeout", None),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), EndpointTimeout, "timeout", None),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), EndpointTimeout, "timeout", None),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), EndpointConnectionError,
         "connection", None),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), EndpointConnectionError,
         "connection", None),
        (botocore.exceptions.ResponseStreamingError(error="reset"), EndpointConnectionError, "connection", None),
        (urllib3.exceptions.ProtocolError("Connection broken"), EndpointConnectionError, "connection", None),
        (ConnectionResetError(), EndpointConnectionError, "connection", None),
        (botocore.exceptions.NoCredentialsError(), EndpointConnectionError, "connection", None),
        (botocore.exceptions.ParamValidationError(report="bad"), EndpointHTTPError, "client_error", None),
        (botocore.parsers.ResponseParserError("bad"), EndpointProtocolError, "protocol", None),
        (botocore.eventstream.ChecksumMismatch(1, 2), EndpointProtocolError, "protocol", None),
        (ValueError("bad json"), EndpointProtocolError, "protocol", None),
        (RuntimeError("?"), EndpointError, "endpoint", None),
    ],
)
def test_exception_mapping(exc: Exception, cls: type, kind: str, status: int | None) -> None:
    err = translate_client_error(exc, "sagemaker endpoint ep")
    assert type(err) is cls and err.kind == kind
    assert str(err).startswith("sagemaker endpoint ep")
    if status is not None:
        assert err.status == status  # type: ignore[attr-defined]


def test_our_errors_pass_through_unchanged() -> None:
    original = EndpointProtocolError("x")
    assert translate_client_error(original, "ep") is original


def test_client_config_disables_retries_and_sizes_the_pool() -> None:
    cfg = client_config(24, 30.0)
    assert cfg.max_pool_connections == 24 and cfg.read_timeout == 30.0
    assert cfg.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert pool_size(0) >= 64 and pool_size(3) == 3


def test_a_quoted_signature_never_reaches_a_message() -> None:
    """AWS's answer to a bad signature quotes the request it expected, session token and signature."""
    from fmbench.deploy.sagemaker import _describe

    quoted = ("The request signature we calculated does not match the signature you provided.\n'POST\n/\n\n"
              "x-amz-security-token:IQoJb3JpZ2luX2VjEPLANTED\n' Authorization: AWS4-HMAC-SHA256 "
              "Credential=AKIA/20261203/us-east-1/sagemaker/aws4_request, Signature=0123456789abcdef0123456789abcdef")
    exc = botocore.exceptions.ClientError({"Error": {"Code": "InvalidSignatureException", "Message": quoted}},
                                          "CreateModel")  # type: ignore[arg-type]
    key_id = "AKIAIOSFODNN7EXAMPLE"
    quoted = quoted.replace("Credential=AKIA/", f"Credential={key_id}/")
    exc.response["Error"]["Message"] = quoted  # type: ignore[index]
    for message in (str(translate_client_error(exc, "ep")), str(translate_client_error(exc, "ep", (key_id,))),
                    str(_describe("creating the model", exc))):
        assert "InvalidSignatureException" in message and "x-amz-security-token:***" in message, message
        assert "PLANTED" not in message and "0123456789abcdef" not in message, message
    assert key_id not in str(translate_client_error(exc, "ep", (key_id,)))
    # a placeholder credential ("s", "testing") is no secret to hunt for: the message stays readable
    assert "signature you provided" in str(translate_client_error(exc, "ep", ("s", "t", "testing")))
    # the deploy error is chained to the ClientError, and a failed task's traceback prints both
    assert "PLANTED" not in str(exc) and "0123456789abcdef" not in str(exc)


def test_a_containers_secret_is_taken_out_however_short() -> None:
    # env_from values (HF_TOKEN, a password) are not AWS credentials: no length makes them safe to show
    from fmbench.aws import redact_aws

    text = "ValidationException: value hunter2pw of HF_TOKEN is invalid (hunter2pw-and-more)"
    assert redact_aws(text, ("hunter2pw",)) == text  # credentials' rule: too short to be one
    assert redact_aws(text, ("hunter2pw", "hunter2pw-and-more"), min_len=1) == (
        "ValidationException: value *** of HF_TOKEN is invalid (***)")


def test_a_throttled_answer_says_when_to_try_again() -> None:
    exc = _client_error("ThrottlingException", 429)
    exc.response["ResponseMetadata"]["HTTPHeaders"] = {"retry-after": "7"}  # type: ignore[index]
    err = translate_client_error(exc, "ep")
    assert isinstance(err, EndpointThrottled) and err.retry_after_s == 7.0
    assert translate_client_error(_client_error("ThrottlingException", 429), "ep").retry_after_s is None  # type: ignore[attr-defined]
