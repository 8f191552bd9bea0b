"""Fixtures of the fault tests: the environment of `fmbench` subprocesses and a tiny misbehaving
HTTP server (401s, non-JSON answers, streams without usage, S3 access denied)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.support.app_thread import serve_app
from tests.support.cli import ROOT
from tests.support.sim_shards import CRASH_STATE, ODD_STATE


@pytest.fixture(scope="session")
def fault_cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `fmbench` subprocesses: own Prefect home, no AWS credentials, no real AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home-faults"))
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


_SSE_NO_USAGE = b"".join(
    b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m",
                            "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}).encode()
    + b"\n\n" for w in ("no", "usage", "here")
) + b"data: [DONE]\n\n"

_S3_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied</Message><RequestId>1</RequestId></Error>")


async def _unauthorized(request: web.Request) -> web.Response:
    body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    return web.json_response(body, status=401)


async def _html(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>a web page, not an API</body></html>", content_type="text/html")


async def _no_usage(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "no usage here"}, "finish_reason": "stop"}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_SSE_NO_USAGE)
    await resp.write_eof()
    return resp




async def _dropped(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/flaky/") and not ODD_STATE["flaky_down"]:
        return await _no_usage(request)
    if request.path.startswith("/probed/") and not ODD_STATE["probed"]:  # the first request only
        ODD_STATE["probed"] = True
        return await _no_usage(request)
    assert request.transport is not None
    request.transport.close()  # the endpoint is "down": the connection drops without an answer
    return web.StreamResponse()


async def _crashing(request: web.Request) -> web.StreamResponse:
    name = request.path.split("/")[1]
    served = CRASH_STATE["served"]
    if served.get(name, 0) < CRASH_STATE["after"] or (name == "crash-back" and CRASH_STATE["back"]):
        served[name] = served.get(name, 0) + 1
        return await _no_usage(request)
    return await _dropped(request)


# The answers AWS runtime APIs (bedrock-runtime, sagemaker-runtime) give to refused requests.
AWS_REFUSALS = {
    "expired": (403, "ExpiredTokenException", "The security token included in the request is expired"),
    "invalid-token": (403, "UnrecognizedClientException", "The security token included in the request is invalid."),
    "no-model-access": (403, "AccessDeniedException",
                        "You don't have access to the model with the specified model ID."),
    "bad-model": (400, "ValidationException", "The provided model identifier is invalid."),
    "no-endpoint": (400, "ValidationException", "Endpoint nosuch of account 123456789012 not found."),
}


async def _aws_refusal(request: web.Request) -> web.Response:
    status, code, message = AWS_REFUSALS[request.match_info["case"]]
    # JSON-protocol APIs (SageMaker) carry the code in the body's __type, REST-JSON ones (the
    # runtimes) in the header; AWS sends both shapes, so does this.
    return web.json_response({"__type": f"com.amazon.coral.service#{code}", "message": message}, status=status,
                             headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/"})


async def _s3_denied(request: web.Request) -> web.Response:
    return web.Response(body=_S3_DENIED, status=403, content_type="application/xml")


@pytest.fixture(scope="session")
def odd_server() -> Iterator[str]:
    """Base URL of a server whose ``/unauth/v1`` answers 401, ``/html/v1`` answers HTML, ``/nousage/v1``
    streams answers without usage, ``/down/v1`` drops every connection, ``/flaky/v1`` too while
    ``ODD_STATE["flaky_down"]``, ``/probed/v1`` every one after the first (preflight's probe), ``/crash-back/v1`` and
    ``/crash-gone/v1`` every one after their first few (``CRASH_STATE``), ``/aws/CASE/...`` refuses AWS runtime calls as `AWS_REFUSALS` says,
    and every other path is S3's 403 AccessDenied."""
    app = web.Application()
    for prefix, handler in (("unauth", _unauthorized), ("html", _html), ("nousage", _no_usage),
                            ("down", _dropped), ("flaky", _dropped), ("probed", _dropped),
                            ("crash-back", _crashing), ("crash-gone", _crashing)):
        app.router.add_post(f"/{prefix}/v1/chat/completions", handler)
    app.router.add_post("/aws/{case}/{tail:.*}", _aws_refusal)
    app.router.add_post("/aws/{case}", _aws_refusal)  # JSON-protocol APIs (SageMaker) post to the base path
    app.router.add_route("*", "/{tail:.*}", _s3_denied)
    with serve_app(app) as url:
        yield url

