"""An https endpoint signed by a private certificate authority: without ``ca_bundle`` every request is
a connection error that says what to set; with it the client verifies the server against that bundle
(never by switching verification off); a bundle that cannot be read is one config error at open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.errors import ConfigError, EndpointConnectionError
from fmbench.protocol import Prompt
from tests.support.tls import self_signed, server_context


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


async def _ask(ca_bundle: str | None, cert: tuple[Path, Path]) -> str:
    """One request to a TLS server presenting ``cert``; returns the answer's text."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(*cert))
    await site.start()
    port = runner.addresses[0][1]
    client = OpenAIClient(f"https://127.0.0.1:{port}/v1", "m", inference=InferenceConfig(stream=False),
                          ca_bundle=ca_bundle)
    try:
        await client.open(1)
        try:
            return (await client.complete(Prompt("p", "hello", 1))).text
        finally:
            await client.close()
    finally:
        await runner.cleanup()


def test_a_private_ca_is_trusted_only_through_ca_bundle(tmp_path: Path) -> None:
    cert = self_signed(tmp_path / "server")
    with pytest.raises(EndpointConnectionError, match="server certificate not trusted.*set the endpoint's ca_bundle"):
        asyncio.run(_ask(None, cert))
    assert asyncio.run(_ask(str(cert[0]), cert)) == "hi"
    # another CA's bundle does not make this server trusted
    other = self_signed(tmp_path / "other")
    with pytest.raises(EndpointConnectionError, match="not trusted"):
        asyncio.run(_ask(str(other[0]), cert))


def test_a_ca_bundle_that_cannot_be_read_is_one_config_error(tmp_path: Path) -> None:
    cert = self_signed(tmp_path / "server")
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ConfigError, match=f"endpoint ca_bundle {missing}: cannot load"):
        asyncio.run(_ask(str(missing), cert))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot load the certificate authorities"):
        asyncio.run(_ask(str(garbage), cert))


def test_the_probe_names_the_experiment_whose_ca_bundle_cannot_be_read(tmp_path: Path) -> None:
    from fmbench.config import load_config
    from fmbench.preflight import probe_endpoint

    config = tmp_path / "bench.yml"
    config.write_text("""
name: t
buckets: [[1, 100]]
datasets: [{name: syn, source: synthetic, prompts_per_bucket: 2}]
experiments:
  - name: internal
    endpoint: {provider: openai, base_url: "https://127.0.0.1:9/v1", model: m, ca_bundle: certs/ca.pem}
""")
    cfg = load_config(config)
    with pytest.raises(ConfigError, match=f"experiment internal: endpoint ca_bundle {tmp_path}/certs/ca.pem: cannot"):
        probe_endpoint(cfg.experiments[0], None, "experiment internal")
