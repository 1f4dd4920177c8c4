"""The ``streamserve`` command: its arguments, and what each subcommand does."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console

from streamserve.api.server import ApiServer
from streamserve.cli_help import (
    DESCRIPTION,
    EPILOG,
    HelpFormatter,
    add_command,
    logging_options,
)
from streamserve.codecs.registry import BUILTIN_CODECS, build_codec
from streamserve.descriptor.signing import Signer, generate_key
from streamserve.errors import ConfigurationError, StreamserveError
from streamserve.logs import (
    LogFormat,
    ServingSummary,
    configure_logging,
    log_listening,
    log_model_event,
)
from streamserve.runtime.base import freeze_startup_objects
from streamserve.runtime.model_directory import model_message_of, sidecar_path
from streamserve.runtime.publish import Publisher, model_descriptor, parse_options
from streamserve.runtime.registry import RuntimeContext, build_runtime
from streamserve.runtime.streams import (
    read_length_delimited,
    read_lines,
)
from streamserve.serving.core import ServingCore
from streamserve.serving.routing import load_router
from streamserve.settings import ApiSettings, KafkaSettings, Settings, load_settings

if TYPE_CHECKING:
    from streamserve.demo.wine import ApiStarter

_Section = TypeVar("_Section", bound=BaseModel)

log = logging.getLogger("streamserve")
MAX_PORT = 65535


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.effective_log_format = args.log_format or LogFormat.TEXT
    configure_logging(args.log_level or args.default_log_level, args.effective_log_format)
    threading.excepthook = _log_thread_failure
    try:
        return int(args.handler(args))
    except StreamserveError as err:
        if args.effective_log_format == LogFormat.JSON:
            log.error("%s", err, extra={"event": "failed", "error_kind": err.kind})
        else:
            print(f"streamserve: {err}", file=sys.stderr)
        return 2
    except Exception:
        # A defect: its traceback goes to the log, as a JSON object when the lines are JSON.
        log.critical(
            "stopped by an unexpected error",
            exc_info=True,
            extra={"event": "failed", "error_kind": "internal_error"},
        )
        return 1


def _log_thread_failure(failure: threading.ExceptHookArgs) -> None:
    """An exception no thread caught, as a log record (a JSON object when the lines are JSON)
    rather than a traceback written past the log."""
    if issubclass(failure.exc_type, SystemExit):
        return
    thread = failure.thread.name if failure.thread is not None else "a thread"
    log.critical(
        "unexpected error in %s",
        thread,
        exc_info=(failure.exc_type, failure.exc_value, failure.exc_traceback),  # type: ignore[arg-type]
        extra={"event": "thread_failed", "error_kind": "internal_error", "thread_name": thread},
    )


def _parser() -> argparse.ArgumentParser:
    from streamserve import __version__

    parser = argparse.ArgumentParser(
        prog="streamserve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")
    common = logging_options()
    _demo_command(add_command(commands, common, "demo"))
    _serve_command(add_command(commands, common, "serve"))
    _publish_model_command(add_command(commands, common, "publish-model"))
    _tombstone_command(add_command(commands, common, "publish-tombstone"))
    _keygen_command(add_command(commands, common, "keygen"))
    _sign_command(add_command(commands, common, "sign"))
    _publish_data_command(add_command(commands, common, "publish-data"))
    _status_command(add_command(commands, common, "status"))
    return parser


def _demo_command(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--rate", type=_positive, default=4000.0, help="records per second (default: 4000)"
    )
    demo.add_argument(
        "--seconds-per-model",
        type=_not_negative,
        default=1.0,
        metavar="SECONDS",
        help="time between a model's swap and the next model's arrival (default: 1)",
    )
    demo.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="serve the dashboard and the HTTP API on this port while the demo runs (0: any "
        "free port), and keep streaming after the last model until Ctrl-C",
    )
    demo.set_defaults(handler=_demo)


def _positive(text: str) -> float:
    """A finite number above 0 (an option's type)."""
    value = _not_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def _not_negative(text: str) -> float:
    """A finite number, 0 or above (an option's type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number, 0 or above")
    return value


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port) (an option's type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to {MAX_PORT})")
    return port


def _serve_command(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    serve.add_argument("--data", metavar="FILE", help="records, one per line (- for stdin)")
    serve.add_argument(
        "--models", type=Path, metavar="DIR", help="models folder, watched for new models"
    )
    serve.add_argument(
        "--codec",
        metavar="NAME",
        help=f"record codec: {', '.join(BUILTIN_CODECS)}, or an installed plug-in's name",
    )
    serve.add_argument("--key", help="a constant key (data type) for every record")
    serve.add_argument("--results", metavar="FILE", help="results file (- for stdout)")
    serve.add_argument("--errors", metavar="FILE", help="errors file (- for stderr)")
    serve.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a directory descriptor locations may point into (repeatable)",
    )
    serve.add_argument("--count", type=int, help="stop after this many records")
    serve.add_argument(
        "--timeout-s", type=float, metavar="SECONDS", help="stop after this many seconds"
    )
    serve.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="serve the dashboard and the HTTP API on this port (0: any free port)",
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help="serve the Open Inference Protocol over gRPC on this port (0: any free port; "
        "needs the grpc extra)",
    )
    serve.add_argument(
        "--runtime",
        metavar="NAME",
        help="embedded (the default: files and stdin/stdout), kafka (the [kafka] settings), "
        "or an installed plug-in runtime",
    )
    serve.set_defaults(handler=_serve)


def _publish_model_command(publish_model: argparse.ArgumentParser) -> None:
    publish_model.add_argument("file", type=Path, help="model file, or a SavedModel folder")
    publish_model.add_argument("--key", required=True, help="the data type it serves")
    publish_model.add_argument("--type", help="model type (default: from the file extension)")
    publish_model.add_argument("--name", help="model name (default: the file name)")
    publish_model.add_argument("--version", default="", help="the model's version label")
    publish_model.add_argument("--description", default="")
    publish_model.add_argument("--output", default="AUTO", help="AUTO, VALUE or ARGMAX")
    publish_model.add_argument(
        "--option", action="append", default=[], help="a format option NAME=VALUE (repeatable)"
    )
    _sign_argument(publish_model)
    _kafka_arguments(publish_model)
    publish_model.set_defaults(handler=_publish_model)


def _tombstone_command(tombstone: argparse.ArgumentParser) -> None:
    tombstone.add_argument("--key", required=True, help="the data type to unload")
    _sign_argument(tombstone)
    _kafka_arguments(tombstone)
    tombstone.set_defaults(handler=_publish_tombstone)


def _keygen_command(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument(
        "keyfile", type=Path, help="the private key file to write (the public key: KEYFILE.pub)"
    )
    keygen.set_defaults(handler=_keygen)


def _sign_command(sign: argparse.ArgumentParser) -> None:
    sign.add_argument("keyfile", type=Path, help="the Ed25519 private key (PEM)")
    sign.add_argument(
        "models",
        type=Path,
        nargs="+",
        help="KEY/NAME.EXT model files, SavedModel folders or .desc files, where they are served",
    )
    sign.set_defaults(handler=_sign)


def _publish_data_command(publish_data: argparse.ArgumentParser) -> None:
    publish_data.add_argument(
        "file",
        type=Path,
        help="one record per line, or with --length-delimited, varint-framed binary records",
    )
    publish_data.add_argument("--rate", type=float, help="records per second (default: flat out)")
    publish_data.add_argument("--length-delimited", action="store_true")
    _kafka_arguments(publish_data)
    publish_data.set_defaults(handler=_publish_data)


def _status_command(status: argparse.ArgumentParser) -> None:
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the server's HTTP API")
    status.add_argument(
        "--ca-file",
        type=Path,
        help="PEM CA certificates to verify an https server with (default: the system's)",
    )
    status.add_argument(
        "--client-cert",
        type=Path,
        help="PEM file holding a client key and certificate, for a server that asks for one",
    )
    status.set_defaults(handler=_status)


def _demo(args: argparse.Namespace) -> int:
    from streamserve.demo.wine import DemoOptions, run_demo

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    options = DemoOptions(args.rate, args.seconds_per_model, args.http_port)
    start_api = None if args.http_port is None else _demo_api(args.http_port)
    return run_demo(_console(), options, stop=stop, start_api=start_api)


def _demo_api(port: int) -> ApiStarter:
    """Serves the HTTP API of the demo's core while the demo runs; yields its URL."""

    @contextmanager
    def serve_api(core: ServingCore, is_ready: Callable[[], bool]) -> Iterator[str]:
        api = ApiServer(core, ApiSettings(port=port), is_ready)
        api.start()
        try:
            yield api.url
        finally:
            api.stop()

    return serve_api


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))  # logs and pipes: do not wrap tables
    return console


def _load_settings(config: Path | None) -> Settings:
    """:func:`load_settings`, with a settings file that is not TOML (or not readable) refused
    as any refused setting is."""
    try:
        return load_settings(config)
    except (ValueError, OSError) as err:  # tomllib.TOMLDecodeError, UnicodeDecodeError
        raise ConfigurationError(f"cannot read the settings file {config}: {err}") from err


def _settings_from(args: argparse.Namespace) -> Settings:
    base = _load_settings(args.config)
    embedded = base.embedded.model_copy(
        update={
            name: value
            for name, value in {
                "data": args.data,
                "models_dir": args.models,
                "results": args.results,
                "errors": args.errors,
            }.items()
            if value is not None
        }
    )
    codec = base.codec.model_copy(
        update={
            name: value
            for name, value in {"format": args.codec, "key": args.key}.items()
            if value is not None
        }
    )
    roots = [*base.serving.model_roots, *args.model_root]
    if embedded.models_dir is not None:
        roots.append(embedded.models_dir)
    serving = base.serving.model_copy(update={"model_roots": roots})
    ports = {"port": args.http_port, "grpc_port": args.grpc_port}
    api = _validated(base.api, "api", {k: v for k, v in ports.items() if v is not None})
    logs = base.logging.model_copy(
        update={
            name: value
            for name, value in {"level": args.log_level, "format": args.log_format}.items()
            if value is not None
        }
    )
    update = {"embedded": embedded, "codec": codec, "serving": serving, "api": api, "logging": logs}
    if args.runtime is not None:
        update["runtime"] = args.runtime
    return base.model_copy(update=update)


def _validated(section: _Section, name: str, changes: dict[str, object]) -> _Section:
    """``section`` (the settings' ``name``) with the command line's ``changes``, checked as the
    settings file's values are (``model_copy`` checks nothing)."""
    if not changes:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in (name, *error['loc']))}: {error['msg']}"
            for error in err.errors()
        )
        raise ConfigurationError(f"invalid options: {problems}") from err


def _serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    configure_logging(settings.logging.level, settings.logging.format)
    args.effective_log_format = settings.logging.format
    codec = build_codec(settings.codec)
    serving = settings.serving
    router = load_router(serving.router, serving.router_options) if serving.router else None
    with ServingCore(serving, router=router) as core, ExitStack() as resources:
        context = RuntimeContext(settings, core, codec, resources, on_event=log_model_event)
        runtime = build_runtime(settings.runtime, context)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: runtime.stop())
        if settings.api.port is not None:
            api = ApiServer(core, settings.api, runtime.ready.is_set, lambda: runtime.consumer_lag)
            api.start()
            resources.callback(api.stop)
            log_listening("HTTP API", api.url)
        if settings.api.grpc_port is not None:
            from streamserve.api.grpc import grpc_server  # grpc is imported only when used

            grpc_api = grpc_server(core, settings.api, runtime.ready.is_set)
            grpc_api.start()
            resources.callback(grpc_api.stop)
            log_listening("gRPC API", grpc_api.address)
        interval_s = settings.logging.summary_interval_s
        if interval_s > 0:
            summary = ServingSummary(core, interval_s, lambda: runtime.consumer_lag)
            summary.start()
            resources.callback(summary.stop)
        done = runtime.run(count=args.count, timeout_s=args.timeout_s)
    log.info(
        "%d records, %d results, %d errors, %d model events in %.2f s",
        done.records,
        done.results,
        done.errors,
        done.model_events,
        done.elapsed_s,
        extra={
            "event": "stopped",
            "records": done.records,
            "results": done.results,
            "errors": done.errors,
            "model_events": done.model_events,
            "elapsed_s": round(done.elapsed_s, 3),
        },
    )
    return 0


def _kafka_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file ([kafka] section)"
    )
    command.add_argument(
        "--bootstrap-servers", metavar="HOSTS", help="overrides kafka.bootstrap_servers"
    )
    command.add_argument("--topic", help="default: kafka.models_topic / kafka.data_topics[0]")


def _sign_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--sign",
        type=Path,
        metavar="KEYFILE",
        help="sign with this Ed25519 private key (PEM; see streamserve keygen)",
    )


def _publisher(args: argparse.Namespace) -> tuple[Publisher, KafkaSettings]:
    kafka = _load_settings(args.config).kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    return Publisher(kafka.bootstrap_servers, kafka.producer), kafka


def _publish_model(args: argparse.Namespace) -> int:
    descriptor = model_descriptor(
        args.file,
        args.key,
        model_type=args.type,
        name=args.name,
        version=args.version,
        description=args.description,
        options=parse_options(args.option),
        output=args.output,
    )
    signer = Signer.from_file(args.sign) if args.sign else None
    publisher, kafka = _publisher(args)
    topic = args.topic or kafka.models_topic
    publisher.publish_model(topic, descriptor, signer)
    signed = "" if signer is None else f", signed by key {signer.key_id}"
    print(
        f"streamserve: published {descriptor.name} ({descriptor.model_type_label}, "
        f"{descriptor.version_label}) for key {descriptor.data_type!r} to {topic}{signed}"
    )
    return 0


def _publish_tombstone(args: argparse.Namespace) -> int:
    signer = Signer.from_file(args.sign) if args.sign else None
    publisher, kafka = _publisher(args)
    topic = args.topic or kafka.models_topic
    publisher.publish_tombstone(topic, args.key, signer)
    signed = "" if signer is None else f", signed by key {signer.key_id}"
    print(f"streamserve: published a tombstone for key {args.key!r} to {topic}{signed}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    public_path, inline = generate_key(args.keyfile)
    signer = Signer.from_file(args.keyfile)
    print(
        f"streamserve: wrote the private key {args.keyfile} (keep it secret) and the public key "
        f"{public_path}; key id {signer.key_id}\n"
        "servers that trust it list the public key file, or the key inline, in "
        f"serving.security.trusted_keys:\n  {inline}"
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    signer = Signer.from_file(args.keyfile)
    for path in args.models:
        try:
            payload = model_message_of(path, signed=True)
            sidecar = sidecar_path(path)
            sidecar.write_bytes(signer.sign_model(payload).encode() + b"\n")
        except OSError as err:
            raise StreamserveError(f"cannot sign {path}: {err}") from err
        print(f"streamserve: signed {path} with key {signer.key_id}: {sidecar}")
    return 0


def _publish_data(args: argparse.Namespace) -> int:
    publisher, kafka = _publisher(args)
    try:
        with args.file.open("rb") as stream:
            frames = read_length_delimited if args.length_delimited else read_lines
            payloads = list(frames(stream))
    except (OSError, ValueError) as err:
        raise StreamserveError(f"cannot read records from {args.file}: {err}") from err
    # Every full pass of the cyclic collector walks a list of a million records, and those
    # pauses show as gaps in the paced stream: out of its view, the pace holds.
    freeze_startup_objects()
    topic = args.topic or kafka.data_topics[0]
    publisher.publish_records(topic, payloads, args.rate, _console())
    print(f"streamserve: published {len(payloads)} records to {topic}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from streamserve.api.status import print_status

    return print_status(_console(), args.url, ca_file=args.ca_file, client_cert=args.client_cert)
