"""Configuration as values: pydantic models, read from a TOML file and ``STREAMSERVE_*`` env vars.

Nothing reads configuration globally: :func:`load_settings` returns a value that the CLI passes
to constructors. Environment variables override the file; nested fields use ``__``, e.g.
``STREAMSERVE_BATCH__MAX_RECORDS=4096``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streamserve.errors import ConfigurationError
from streamserve.formats.archive import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_UNPACKED_BYTES
from streamserve.formats.base import DEFAULT_SKLEARN_TRUSTED_TYPES
from streamserve.formats.cache import DEFAULT_MAX_BYTES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_MAX_MODEL_MESSAGE_BYTES = 200 * 1024**2  # the Kafka models reader fetches as much
# librdkafka fetches a message of at most this (fetch.message.max.bytes); the models reader must
# fetch the largest model message whole.
MAX_MODEL_MESSAGE_BYTES_LIMIT = 1_000_000_000


class ModelSecuritySettings(_Section):
    """``[serving.security]``: what a model publisher is trusted with. Whoever can write the
    models topic (or the models folder) decides what is served; these bound what a hostile or
    broken publisher can do, and with trusted keys only signed models are served."""

    max_model_message_bytes: int = Field(
        DEFAULT_MAX_MODEL_MESSAGE_BYTES,
        gt=0,
        description="a model message (or models-folder file) larger than this is rejected before "
        f"it is decoded; at most {MAX_MODEL_MESSAGE_BYTES_LIMIT} (the largest message the Kafka "
        "models reader can fetch; publish larger models by location)",
    )
    max_unpacked_bytes: int = Field(
        DEFAULT_MAX_UNPACKED_BYTES,
        gt=0,
        description="an archive (a SavedModel sent as data) that writes more than this many bytes "
        "when unpacked is rejected, and what it wrote removed",
    )
    max_archive_members: int = Field(
        DEFAULT_MAX_ARCHIVE_MEMBERS, gt=0, description="an archive with more members is rejected"
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Ed25519 public keys (a path to a PEM or raw 32-byte file, or inline "
        "'ed25519:<base64>'); when any is set, model messages and tombstones must be signed by "
        "one of them (the signing extra)",
    )

    @field_validator("max_model_message_bytes")
    @classmethod
    def _fetchable(cls, limit: int) -> int:
        if limit > MAX_MODEL_MESSAGE_BYTES_LIMIT:
            raise ValueError(
                f"{limit} is over {MAX_MODEL_MESSAGE_BYTES_LIMIT}: the Kafka models reader fetches "
                "a model message whole, and librdkafka fetches at most that "
                "(fetch.message.max.bytes); publish larger models by location"
            )
        return limit


MAX_DEFAULT_LOADER_THREADS = 4


def default_loader_threads() -> int:
    """The CPUs this process may run on, at most ``MAX_DEFAULT_LOADER_THREADS``: a load mostly
    runs native code (model libraries, the JVM, child-process checks), which uses every core;
    past a few threads they only queue for the interpreter's lock."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_LOADER_THREADS))


class ServingSettings(_Section):
    loader_threads: int = Field(
        default_factory=default_loader_threads,
        ge=1,
        description="threads loading and validating models (default: the CPUs this process may "
        "use, at most 4)",
    )
    threads_per_model: int = Field(1, ge=1, description="intra-op threads of each model runtime")
    model_roots: list[Path] = Field(
        default_factory=list, description="directories a descriptor's location may point into"
    )
    max_live_models: int | None = Field(
        None,
        ge=1,
        description="model instances kept in memory; the least recently used idle ones beyond "
        "this are evicted and made again on their next use (None: no limit)",
    )
    validation_rows: int = Field(8, ge=1, description="recent rows per key kept to probe models")
    max_rejections_kept: int = Field(20, ge=1, description="recent rejections kept per key")
    quarantine_after_failures: int = Field(
        100,
        ge=1,
        description="a current model whose scoring fails this many records in a row, with none "
        "scored between, is taken out of service and its previous model restored",
    )
    scoring_deadline_s: float | None = Field(
        30.0,
        gt=0,
        description="the time limit of each model (or router) call while scoring: a call that "
        "overruns it is left running, its model taken out of service (the previous one "
        "restored) and the batch scored again without it; None: no limit",
    )
    probe_timeout_s: float = Field(
        10.0, gt=0, description="a new model whose validation probe overruns this is rejected"
    )
    load_timeout_s: float = Field(
        300.0, gt=0, description="a model whose factory does not load it within this is rejected"
    )
    artifact_cache_dir: Path | None = Field(
        None,
        description="keeps unpacked archives and passed checks by digest across restarts",
    )
    artifact_cache_max_bytes: int = Field(
        DEFAULT_MAX_BYTES, gt=0, description="unpacked archives beyond this are pruned, LRU"
    )
    sklearn_trusted_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKLEARN_TRUSTED_TYPES),
        description="types a skops file may instantiate beyond skops' own defaults",
    )
    security: ModelSecuritySettings = Field(
        default_factory=ModelSecuritySettings,
        description="size limits of model messages and archives, and trusted signing keys",
    )

    router: str | None = Field(
        None, description="a plug-in key router's name (streamserve.routers); None: each key's own"
    )
    router_options: dict[str, object] = Field(
        default_factory=dict, description="the router's own settings"
    )


class BatchSettings(_Section):
    max_records: int = Field(1024, ge=1, description="a micro-batch closes at this size")
    max_delay_ms: float = Field(5.0, ge=0, description="... or this long after its first record")


class CodecSettings(_Section):
    format: str = Field(
        "json",
        min_length=1,
        description="the codec's name: a built-in (json, csv, wine-protobuf, wine-csv) or a "
        "plug-in's (entry-point group streamserve.codecs); checked when the codec is built",
    )
    key_field: str = "dataType"
    key: str | None = Field(None, description="a constant key for every record")
    prefer_message_key: bool = False
    csv_columns: list[str] = Field(default_factory=list)
    csv_delimiter: str = ","
    csv_ignore: list[str] = Field(default_factory=list)
    options: dict[str, object] = Field(
        default_factory=dict,
        description="a plug-in codec's own settings, read by its factory ([codec.options])",
    )


class EmbeddedSettings(_Section):
    """The embedded runtime's inputs and outputs: files or the standard streams."""

    data: str = Field("-", description="data file (one record per line), or - for stdin")
    models_dir: Path | None = Field(None, description="watched for model files and descriptors")
    results: str = Field("-", description="results file (JSON lines), or - for stdout")
    errors: str = Field("-", description="errors file (JSON lines), or - for stderr")
    poll_interval_ms: float = Field(200.0, gt=0, description="how often models_dir is scanned")


MANAGED_KAFKA_PROPERTIES: dict[str, dict[str, str]] = {
    "consumer": {
        "group.id": "set kafka.group_id",
        "enable.auto.commit": "offsets are committed once outputs are acknowledged",
        "enable.auto.offset.store": "offsets are committed once outputs are acknowledged",
        "enable.partition.eof": "the models reader relies on it",
        "on_commit": "streamserve logs failed commits",
    },
    "producer": {"transactional.id": "set kafka.transactional_id"},
}

_NO_ACKS = "outputs count as acknowledged once sent, written or not, and offsets are committed"
REFUSED_KAFKA_VALUES: dict[str, tuple[tuple[str, frozenset[str], str], ...]] = {
    # (property, values as librdkafka reads them, why): the at-least-once guarantee commits
    # offsets once every output's delivery is acknowledged, so acks must be real and reported.
    "consumer": (),
    "producer": (
        ("acks", frozenset({"0"}), _NO_ACKS),
        ("request.required.acks", frozenset({"0"}), _NO_ACKS),
        (
            "delivery.report.only.error",
            frozenset({"true", "t", "1"}),
            "no output is ever acknowledged, so no offset is ever committed",
        ),
    ),
}


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    group_id: str = Field("streamserve", description="consumer group of the data topics")
    data_topics: list[str] = Field(default_factory=lambda: ["data"])
    models_topic: str = Field("models", description="read in full by every replica")
    results_topic: str = "results"
    errors_topic: str = "errors"
    consumer: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="extra librdkafka consumer settings (security.protocol, sasl.*, ssl.*, ...)",
    )
    producer: dict[str, str | int | bool] = Field(
        default_factory=dict, description="extra librdkafka producer settings"
    )
    catch_up_timeout_s: float = Field(300.0, gt=0, description="models topic catch-up limit")
    flush_timeout_s: float = Field(
        300.0, gt=0, description="wait this long for output acks and commits (broker away)"
    )
    max_batches_in_flight: int = Field(
        4,
        ge=0,
        description="batches produced but not yet acknowledged while the next ones are scored",
    )
    exactly_once: bool = Field(
        False, description="outputs and offsets in one transaction per batch (needs broker support)"
    )
    transactional_id: str | None = Field(
        None, description="the replica's transactional.id (default: group, host and process id)"
    )

    @field_validator("consumer", "producer")
    @classmethod
    def _leaves_managed_properties_alone(
        cls, properties: dict[str, str | int | bool], info: ValidationInfo
    ) -> dict[str, str | int | bool]:
        """Properties that streamserve's delivery guarantees rest on are not overridable: auto
        commits would commit records before their outputs are written, and the models reader
        needs its own group and end-of-partition events to know it has caught up. Producer
        values that fake or hide delivery acknowledgements are refused too."""
        managed = MANAGED_KAFKA_PROPERTIES[info.field_name or ""]
        clashes = sorted(managed.keys() & properties.keys())
        if clashes:
            advice = "; ".join(f"{name}: {managed[name]}" for name in clashes)
            raise ValueError(f"streamserve sets these itself: {advice}")
        refused = [
            f"{name} = {properties[name]!r}: {why}"
            for name, values, why in REFUSED_KAFKA_VALUES[info.field_name or ""]
            if name in properties and str(properties[name]).lower() in values
        ]
        if refused:
            raise ValueError(f"these break at-least-once delivery: {'; '.join(refused)}")
        return properties


ADMIN_TOKEN_MIN_LENGTH = 32
ADMIN_TOKEN_MIN_DISTINCT = 8  # "aaaa…" or "abab…" is long, and guessed at once
MIB = 1 << 20


def admin_token_problem(token: str) -> str | None:
    """Why ``token`` would not protect admin actions, or None if it would. Never quotes it."""
    advice = "make one with `openssl rand -hex 32`"
    if not token.isascii() or not token.isprintable() or " " in token:
        return f"it must be printable ASCII without spaces (a header value); {advice}"
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        return f"it has {len(token)} characters, fewer than {ADMIN_TOKEN_MIN_LENGTH}; {advice}"
    if len(set(token)) < ADMIN_TOKEN_MIN_DISTINCT:
        return (
            f"it has {len(set(token))} distinct characters, fewer than "
            f"{ADMIN_TOKEN_MIN_DISTINCT}; {advice}"
        )
    return None


class MetricsSettings(_Section):
    """Which keys have series of their own in ``/metrics`` (``[api.metrics]``).

    Every scrape carries the totals and the aggregates per model type, whatever the number of
    keys; per-key series (22 a key) only for the keys chosen here, so that a scrape stays
    bounded with 100,000 keys."""

    keys: list[str] = Field(
        default_factory=list,
        description="keys that always have per-key series (those that have a model slot)",
    )
    top_keys: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        20,
        description="per-key series also for the N keys whose models scored the most records; "
        '0: none; "all": every key (22 series and 2.3 KB a key: small deployments only)',
    )
    top_error_keys: int = Field(
        20,
        ge=0,
        description="per-key series also for the N keys whose models' records got the most "
        "error records (keys without any are left out); 0: none",
    )


class ApiSettings(_Section):
    """The HTTP API: where it listens, TLS, the admin token, and the limits that keep a hostile
    or broken client from taking the server's memory or connections."""

    # a refused admin token must not be echoed into logs
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    port: int | None = Field(None, ge=0, le=65535, description="HTTP API port; None: no API")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the Open Inference Protocol over gRPC (the grpc extra), on the "
        "same host, with the same TLS files and limits as the HTTP API; None: no gRPC API",
    )
    admin_token: SecretStr | None = Field(
        None,
        description=f"bearer token of admin actions ({ADMIN_TOKEN_MIN_LENGTH}+ printable ASCII "
        f"characters, {ADMIN_TOKEN_MIN_DISTINCT}+ distinct, no spaces); None: admin off",
    )
    tls_certfile: Path | None = Field(
        None, description="PEM certificate (chain) of the API: it then speaks HTTPS only"
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile")
    tls_ca_certs: Path | None = Field(
        None,
        description="PEM CA certificates: when set, a client must present a certificate they "
        "signed (mutual TLS)",
    )
    max_body_bytes: int = Field(
        16 * MIB,
        gt=0,
        description="a request body larger than this is refused (413) before it is read whole",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's line and headers (and before the first, the TLS handshake) must "
        "arrive whole within this after the connection opens or the previous response ends "
        "(else the connection is closed)",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive whole within this (408 otherwise)"
    )
    max_connections: int = Field(
        64,
        ge=1,
        description="connections held at once (TLS handshakes included): one opened beyond them, "
        "or while this many requests are still being answered, is answered 503 and closed (over "
        "TLS closed before its handshake)",
    )
    inference_threads: int = Field(
        2,
        ge=1,
        description="V2 inference requests parsed and scored at once; more wait their turn",
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings,
        description="which keys have per-key series in /metrics ([api.metrics])",
    )
    dashboard: bool = Field(
        True,
        description="serve the dashboard at / and sample its history on a thread of the API",
    )
    dashboard_interval_s: float = Field(
        1.0,
        gt=0,
        description="how often the dashboard's history samples the serving state (a sample "
        "reads every model's statistics; it waits longer if sampling would take over a tenth "
        "of a core)",
    )
    dashboard_history_s: float = Field(
        600.0, gt=0, description="how much history the dashboard keeps and plots"
    )
    keys_page_size: int = Field(100, ge=1, description="keys in a /keys answer that gives no limit")
    keys_page_max: int = Field(
        1000, ge=1, description="the most keys a /keys answer holds, whatever limit it asks"
    )

    @field_validator("admin_token")
    @classmethod
    def _token_protects(cls, token: SecretStr | None) -> SecretStr | None:
        problem = None if token is None else admin_token_problem(token.get_secret_value())
        if problem is not None:
            raise ValueError(f"the admin token would not protect admin actions: {problem}")
        return token

    @model_validator(mode="after")
    def _tls_files_pair(self) -> ApiSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = (
                ("tls_certfile", "tls_keyfile")
                if self.tls_keyfile is None
                else ("tls_keyfile", "tls_certfile")
            )
            raise ValueError(f"api.{given} is set without api.{missing}: TLS needs both")
        if self.tls_ca_certs is not None and self.tls_certfile is None:
            raise ValueError(
                "api.tls_ca_certs (client certificates) needs api.tls_certfile and tls_keyfile"
            )
        return self


class LoggingSettings(_Section):
    """``[logging]``: the server's log lines on stderr (``--log-level``, ``--log-format``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="streamserve's log lines at this level and above: INFO shows the lifecycle "
        "(connected, models caught up, partitions, swaps, the summary), WARNING only problems "
        "(rejected models among them), DEBUG everything, libraries' own lines included",
    )
    format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line for log shippers"
    )
    summary_interval_s: float = Field(
        60.0,
        ge=0,
        le=86_400,  # a day; a wait much longer overflows the clock's time_t
        description="seconds between summary lines (records/s, errors, consumer lag, live "
        "models), at most a day; 0: none",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper_case(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("format", mode="before")
    @classmethod
    def _lower_case(cls, log_format: object) -> object:
        return log_format.lower() if isinstance(log_format, str) else log_format


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMSERVE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    serving: ServingSettings = Field(default_factory=ServingSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    runtime: str = Field("embedded", description="embedded, kafka, or a plug-in runtime's name")
    runtime_options: dict[str, object] = Field(
        default_factory=dict, description="a plug-in runtime's own settings"
    )
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(toml_file: Path | None = None) -> Settings:
    """Settings from the environment > ``toml_file`` > defaults.

    Raises :class:`ConfigurationError` naming every setting that is refused and why.
    """
    if toml_file is not None and not toml_file.is_file():
        raise ConfigurationError(f"settings file {toml_file} does not exist")
    try:
        if toml_file is None:
            return Settings()

        class FileSettings(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": toml_file})

        return FileSettings()
    except ValidationError as err:
        where = (
            f"{toml_file} or STREAMSERVE_* variables" if toml_file else "STREAMSERVE_* variables"
        )
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in err.errors()
        )
        raise ConfigurationError(f"invalid settings ({where}): {problems}") from err
