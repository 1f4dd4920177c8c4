from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamserve.errors import ConfigurationError
from streamserve.settings import (
    MAX_MODEL_MESSAGE_BYTES_LIMIT,
    KafkaSettings,
    Settings,
    load_settings,
)


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


@pytest.mark.parametrize(
    ("section", "prop", "advice"),
    [
        ("consumer", "enable.auto.commit", "once outputs are acknowledged"),
        ("consumer", "group.id", "set kafka.group_id"),
        ("consumer", "enable.partition.eof", "models reader"),
        ("producer", "transactional.id", "set kafka.transactional_id"),
    ],
)
def test_kafka_properties_the_guarantees_rest_on_cannot_be_overridden(
    tmp_path: Path, section: str, prop: str, advice: str
) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text(f'[kafka.{section}]\n"{prop}" = "x"\n"security.protocol" = "SSL"\n')
    with pytest.raises(ConfigurationError, match=f"kafka.{section}.*{prop}: .*{advice}"):
        load_settings(config)


def test_other_kafka_properties_pass_through(tmp_path: Path) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text('[kafka.consumer]\n"security.protocol" = "SSL"\n"fetch.wait.max.ms" = 10\n')
    assert load_settings(config).kafka.consumer == {
        "security.protocol": "SSL",
        "fetch.wait.max.ms": 10,
    }


@pytest.mark.parametrize(
    ("producer", "reason"),
    [
        ({"acks": 0}, "acks = 0: outputs count as acknowledged once sent"),
        ({"request.required.acks": 0}, "request.required.acks = 0: outputs count as"),
        ({"delivery.report.only.error": True}, "delivery.report.only.error = True: no output"),
    ],
    ids=["acks-0", "request.required.acks-0", "delivery-report-only-error"],
)
def test_producer_values_that_fake_or_hide_delivery_acknowledgements_are_refused(
    producer: dict[str, int | bool], reason: str
) -> None:
    with pytest.raises(ValueError, match=f"break at-least-once delivery: {reason}"):
        KafkaSettings(producer=producer)


def test_producer_values_that_keep_delivery_acknowledgements_pass_through() -> None:
    producer: dict[str, str | int | bool] = {
        "acks": "all",
        "request.required.acks": 1,
        "delivery.report.only.error": False,
    }
    assert KafkaSettings(producer=producer).producer == producer


@pytest.mark.parametrize("limit", [1 << 30, 1 << 31], ids=["1GiB", "2GiB"])
def test_a_model_message_limit_over_what_kafka_can_fetch_is_refused_naming_it(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka fetches a message of at most 1,000,000,000 bytes (fetch.message.max.bytes),
    and the models reader must fetch a model message whole: a larger limit stops the server at
    startup naming serving.security.max_model_message_bytes, not the Kafka consumer's settings."""
    monkeypatch.setenv("STREAMSERVE_SERVING__SECURITY__MAX_MODEL_MESSAGE_BYTES", str(limit))
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert f"serving.security.max_model_message_bytes: Value error, {limit} is over" in str(
        refused.value
    )
    assert "fetch.message.max.bytes" in str(refused.value)
    monkeypatch.setenv(
        "STREAMSERVE_SERVING__SECURITY__MAX_MODEL_MESSAGE_BYTES", str(MAX_MODEL_MESSAGE_BYTES_LIMIT)
    )
    assert load_settings().serving.security.max_model_message_bytes == 1_000_000_000
