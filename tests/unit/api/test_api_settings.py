"""The HTTP API's settings: an admin token that protects, TLS files that go together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamserve.errors import ConfigurationError
from streamserve.settings import ApiSettings, load_settings

STRONG = "0123456789abcdef0123456789abcdef"  # 32 characters, 16 distinct


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (STRONG[:31], "it has 31 characters, fewer than 32"),
        ("a" * 64, "it has 1 distinct characters, fewer than 8"),
        ("0123456" * 8, "it has 7 distinct characters, fewer than 8"),
        ("é" + STRONG, "printable ASCII without spaces"),
        (STRONG + "\t", "printable ASCII without spaces"),
        (STRONG + " x", "printable ASCII without spaces"),
    ],
)
def test_a_weak_admin_token_is_refused_without_being_echoed(
    token: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSERVE_API__ADMIN_TOKEN", token)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    message = str(refused.value)
    assert "api.admin_token" in message
    assert why in message
    assert "openssl rand -hex 32" in message
    assert token not in message
    with pytest.raises(ValidationError) as invalid:
        ApiSettings(admin_token=token)
    assert token not in str(invalid.value)


def test_a_strong_admin_token_is_kept_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_API__ADMIN_TOKEN", STRONG)
    api = load_settings().api
    assert api.admin_token is not None
    assert api.admin_token.get_secret_value() == STRONG
    assert STRONG not in repr(api)


def test_a_weak_token_is_refused_by_the_app_too() -> None:
    from streamserve.api.app import build_app
    from streamserve.serving.core import ServingCore
    from streamserve.settings import ServingSettings

    with ServingCore(ServingSettings()) as core:
        with pytest.raises(ConfigurationError, match="too weak: it has 1 distinct"):
            build_app(core, admin_token="x" * 40)
        build_app(core, admin_token=STRONG)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"TLS_CERTFILE": "cert.pem"}, "api.tls_certfile is set without api.tls_keyfile"),
        ({"TLS_KEYFILE": "key.pem"}, "api.tls_keyfile is set without api.tls_certfile"),
        ({"TLS_CA_CERTS": "ca.pem"}, "api.tls_ca_certs (client certificates) needs"),
    ],
)
def test_tls_files_that_do_not_go_together_are_refused(
    files: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in files.items():
        monkeypatch.setenv(f"STREAMSERVE_API__{name}", value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert message in str(refused.value)


def test_the_limits_have_their_documented_defaults() -> None:
    api = ApiSettings()
    assert (api.max_body_bytes, api.body_timeout_s, api.header_timeout_s) == (16 << 20, 30.0, 10.0)
    assert (api.max_connections, api.inference_threads) == (64, 2)
