"""TLS for the tests' servers (Python's ssl, nginx, the simulator): the certificate is
`fmbench.simulator.certs.self_signed`'s, which a client trusts as a private certificate authority
(the OpenAI endpoint's ``ca_bundle``)."""

from __future__ import annotations

import ssl
from pathlib import Path

from fmbench.simulator.certs import self_signed

__all__ = ["self_signed", "server_context"]


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server-side context presenting the certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
