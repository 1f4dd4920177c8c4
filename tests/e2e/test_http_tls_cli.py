"""``streamserve serve`` with the HTTP API over TLS, configured by STREAMSERVE_API__* variables:
served over HTTPS to a client that trusts the CA; bad TLS settings stop it at startup."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_lines import wait_for_line
from tls_certificates import write_pki

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def serve_command(tmp_path: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "streamserve", "serve", "--codec", "json"),
        *("--http-port", "0", "--results", str(tmp_path / "results.jsonl")),
    ]


def test_the_api_speaks_https_with_the_configured_certificate(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    env = {
        **ENV,
        "STREAMSERVE_API__TLS_CERTFILE": str(pki.server_cert),
        "STREAMSERVE_API__TLS_KEYFILE": str(pki.server_key),
    }
    server = subprocess.Popen(
        serve_command(tmp_path), stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert server.stdin is not None
    assert server.stderr is not None
    try:
        match = wait_for_line(server.stderr, r"HTTP API on https?://\S+:(\d+)")
        url = f"https://127.0.0.1:{match.group(1)}"
        trusting = ssl.create_default_context(cafile=pki.ca)
        with httpx.Client(base_url=url, verify=trusting) as http:
            reply = http.get("/v2/health/live")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/v2/health/live")
        status = subprocess.run(
            [sys.executable, "-m", "streamserve", "status", "--url", url],
            capture_output=True,
            env={**ENV, "SSL_CERT_FILE": str(pki.ca)},
            timeout=60,
            check=False,
        )
    finally:
        server.stdin.close()
        assert server.wait(timeout=60) == 0
        server.stderr.close()
    assert reply.json() == {"live": True}
    assert status.returncode == 0, status.stdout.decode() + status.stderr.decode()
    assert b"Serving statistics at https://" in status.stdout


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"TLS_CERTFILE": "{cert}"}, "api.tls_certfile is set without api.tls_keyfile"),
        (
            {"TLS_CERTFILE": "{cert}", "TLS_KEYFILE": "{tmp}/absent.pem"},
            "api.tls_keyfile: cannot read",
        ),
    ],
)
def test_bad_tls_settings_stop_serve_at_startup_naming_the_setting(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    pki = write_pki(tmp_path / "pki")
    env = {
        **ENV,
        **{
            f"STREAMSERVE_API__{name}": value.format(cert=pki.server_cert, tmp=tmp_path)
            for name, value in variables.items()
        },
    }
    done = subprocess.run(
        serve_command(tmp_path), input=b"", capture_output=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 2
    assert message in done.stderr.decode()
