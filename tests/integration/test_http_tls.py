"""The HTTP API over TLS: certificates made for the test, a real server, stock clients.

A client that trusts the test's CA is served; one that does not, or that speaks plain HTTP to
the TLS port, is not. With ``api.tls_ca_certs`` a client must also show a certificate the CA
signed (mutual TLS). Bad certificate settings stop the server at startup, naming the setting.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from tls_certificates import Pki, write_pki

from streamserve.api.server import ApiServer
from streamserve.api.status import print_status
from streamserve.errors import ConfigurationError
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path / "pki")


def tls_settings(pki: Pki, **extra: object) -> ApiSettings:
    return ApiSettings(
        port=0,
        tls_certfile=pki.server_cert,
        tls_keyfile=pki.server_key,
        **extra,  # type: ignore[arg-type]
    )


@contextmanager
def running(core: ServingCore, settings: ApiSettings) -> Iterator[ApiServer]:
    server = ApiServer(core, settings, lambda: True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def trusting(ca: Path, client: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client)
    return context


def test_a_client_trusting_the_ca_is_served_over_https_and_others_are_not(
    core: ServingCore, pki: Pki, tmp_path: Path
) -> None:
    other_ca = write_pki(tmp_path / "other").ca
    with running(core, tls_settings(pki)) as server:
        assert server.url.startswith("https://")
        with httpx.Client(base_url=server.url, verify=trusting(pki.ca)) as http:
            reply = http.get("/v2/health/live")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/v2/health/live")  # the system's CAs: not this one
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/v2/health/live", verify=trusting(other_ca))
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/v2/health/live")  # a TLS port speaks no plain HTTP
        with httpx.Client(base_url=server.url, verify=trusting(pki.ca)) as http:
            after = http.get("/keys")  # refused handshakes left the server serving
    assert (reply.status_code, reply.json()) == (200, {"live": True})
    assert reply.http_version == "HTTP/1.1"
    assert after.status_code == 200


def test_client_certificates_when_the_server_asks_for_them(
    core: ServingCore, pki: Pki, tmp_path: Path
) -> None:
    stranger = write_pki(tmp_path / "stranger").client  # signed by another CA
    with running(core, tls_settings(pki, tls_ca_certs=pki.ca)) as server:
        url = f"{server.url}/v2/health/live"
        served = httpx.get(url, verify=trusting(pki.ca, pki.client))
        for context in (trusting(pki.ca), trusting(pki.ca, stranger)):
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=context)
    assert served.status_code == 200


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset), sending nothing, within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# asyncio's own TLS handshake timeout is 60 s: waiting half of it tells the two apart.
WAIT_S = 30.0


def test_silent_connections_to_the_https_port_are_closed_after_the_header_timeout(
    core: ServingCore, pki: Pki
) -> None:
    """api.header_timeout_s closes connections opened and left silent, over TLS too: one that
    never starts its TLS handshake (the handshake has the header timeout, not asyncio's 60 s),
    and one that finishes it and sends no request (the deadline runs from the accept)."""
    settings = tls_settings(pki, header_timeout_s=1.0)
    context = trusting(pki.ca)
    with running(core, settings) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            never_shook_hands = closed_within(silent, WAIT_S)
        with (
            socket.create_connection(("127.0.0.1", server.port)) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as shook_hands,
        ):
            after_handshake = closed_within(shook_hands, WAIT_S)
        live = httpx.get(f"{server.url}/v2/health/live", verify=context)
    assert never_shook_hands
    assert after_handshake
    assert live.status_code == 200


def test_tls_connections_beyond_the_limit_are_closed_before_their_handshake(
    core: ServingCore, pki: Pki
) -> None:
    """Connections still in their TLS handshake count against api.max_connections; one beyond
    the limit is closed at once (nothing can be said to it before a handshake)."""
    context = trusting(pki.ca)
    with running(core, tls_settings(pki, max_connections=2, header_timeout_s=30.0)) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        with socket.create_connection(("127.0.0.1", server.port)) as third:
            refused = closed_within(third, WAIT_S)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/health/live", verify=context)
        for sock in silent:
            sock.close()
        deadline = time.monotonic() + WAIT_S
        while True:  # served once the server has noticed the two closed
            try:
                live = httpx.get(f"{server.url}/v2/health/live", verify=context)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the closed connections were never released"
                time.sleep(0.05)
    assert refused
    assert live.status_code == 200


def test_the_status_command_reads_an_https_server(core: ServingCore, pki: Pki) -> None:
    with running(core, tls_settings(pki, tls_ca_certs=pki.ca)) as server:
        console = Console(record=True, width=200)
        verified = print_status(console, server.url, ca_file=pki.ca, client_cert=pki.client)
        table = console.export_text()
        console = Console(record=True, width=200)
        unverified = print_status(console, server.url, client_cert=pki.client)
        refusal = console.export_text()
    assert verified == 0, table
    assert "Serving statistics at https://" in table
    assert unverified == 2
    assert "CERTIFICATE_VERIFY_FAILED" in refusal


def test_the_status_command_line_takes_the_ca_from_ssl_cert_file(
    core: ServingCore, pki: Pki
) -> None:
    """``streamserve status --url https://...`` verifies with the system's CAs, or the bundle
    that OpenSSL's SSL_CERT_FILE names."""
    with running(core, tls_settings(pki)) as server:
        done = subprocess.run(
            [sys.executable, "-m", "streamserve", "status", "--url", server.url],
            capture_output=True,
            env={**os.environ, "SSL_CERT_FILE": str(pki.ca)},
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"0 records, 0 results, 0 errors" in done.stdout


def _encrypted_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.mark.parametrize(
    ("setting", "broken", "message"),
    [
        ("tls_keyfile", "missing", r"api\.tls_keyfile: cannot read .*missing"),
        ("tls_certfile", "missing", r"api\.tls_certfile: cannot read .*missing"),
        ("tls_ca_certs", "missing", r"api\.tls_ca_certs: cannot read .*missing"),
        ("tls_keyfile", "other key", r"api\.tls_certfile .* and api\.tls_keyfile .* are not"),
        ("tls_keyfile", "encrypted", r"private key is encrypted"),
        ("tls_certfile", "not PEM", r"api\.tls_certfile .* are not a PEM certificate"),
        ("tls_ca_certs", "not PEM", r"api\.tls_ca_certs .* holds no PEM CA certificate"),
    ],
)
def test_bad_tls_files_stop_the_server_at_startup_naming_the_setting(
    core: ServingCore, pki: Pki, tmp_path: Path, setting: str, broken: str, message: str
) -> None:
    path = tmp_path / "missing"
    if broken == "other key":
        path = write_pki(tmp_path / "other").server_key
    elif broken == "encrypted":
        path = _encrypted_key(tmp_path / "encrypted.pem")
    elif broken == "not PEM":
        path = tmp_path / "garbage.pem"
        path.write_text("not a certificate\n")
    settings = tls_settings(pki, tls_ca_certs=pki.ca).model_copy(update={setting: path})
    with pytest.raises(ConfigurationError, match=message):
        ApiServer(core, settings, lambda: True)


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        ("0.0.0.0", False, True),
        ("192.0.2.7", False, True),
        ("api.example", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
    ],
)
def test_admin_actions_over_plain_http_off_loopback_are_warned_about(
    core: ServingCore,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    host: str,
    tls: bool,
    warned: bool,
) -> None:
    files = {"tls_certfile": pki.server_cert, "tls_keyfile": pki.server_key} if tls else {}
    settings = ApiSettings(port=0, host=host, admin_token=TOKEN, **files)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streamserve.api.server"):
        ApiServer(core, settings, lambda: True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamserve.api.server"]
    if warned:
        assert warnings == [
            f"admin actions are enabled over plain HTTP on {host}: the admin token crosses the "
            "network in clear text; set api.tls_certfile and api.tls_keyfile"
        ]
    else:
        assert warnings == []
