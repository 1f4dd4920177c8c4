from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamserve.errors import ConfigurationError
from streamserve.settings import Settings, load_settings


def test_defaults() -> None:
    settings = load_settings()
    assert settings.batch.max_records == 1024
    assert settings.serving.threads_per_model == 1


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text('[batch]\nmax_records = 7\nmax_delay_ms = 2\n[codec]\nformat = "csv"\n')
    monkeypatch.setenv("STREAMSERVE_BATCH__MAX_DELAY_MS", "9")
    settings = load_settings(config)
    assert (settings.batch.max_records, settings.batch.max_delay_ms) == (7, 9.0)
    assert settings.codec.format == "csv"


def test_unknown_and_invalid_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[batch]\nmax_recods = 7\n")
    with pytest.raises(ConfigurationError, match=r"invalid settings .*batch\.max_recods"):
        load_settings(config)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings(batch={"max_records": 0})
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize("token", ["", "   ", "short", "has a space in it somewhere"])
def test_an_admin_token_that_would_not_protect_is_refused(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty token used to switch admin authentication off (an empty bearer matched it)."""
    monkeypatch.setenv("STREAMSERVE_API__ADMIN_TOKEN", token)
    with pytest.raises(ConfigurationError, match=r"api\.admin_token"):
        load_settings()


def test_an_empty_admin_token_is_refused_by_the_app_too() -> None:
    from streamserve.api.app import build_app
    from streamserve.serving.core import ServingCore
    from streamserve.settings import ServingSettings

    with ServingCore(ServingSettings()) as core, pytest.raises(ConfigurationError, match="empty"):
        build_app(core, admin_token="")
