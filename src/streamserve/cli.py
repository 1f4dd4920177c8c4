"""The ``streamserve`` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from streamserve.api.server import ApiServer
from streamserve.codecs.registry import BUILTIN_CODECS, build_codec
from streamserve.descriptor.signing import Signer, generate_key
from streamserve.errors import StreamserveError
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
from streamserve.settings import KafkaSettings, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="streamserve: %(levelname)s %(message)s")
    try:
        return int(args.handler(args))
    except StreamserveError as err:
        print(f"streamserve: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from streamserve import __version__

    parser = argparse.ArgumentParser(prog="streamserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the wine demo (embedded, original models)")
    demo.add_argument("--rate", type=float, default=4000.0, help="records per second")
    demo.add_argument(
        "--seconds-per-model", type=float, default=1.0, help="time between model publications"
    )
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser("serve", help="serve models from a folder on records from a file")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--data", help="data file, one record per line (- for stdin)")
    serve.add_argument("--models", type=Path, help="models directory, watched for new models")
    serve.add_argument(
        "--codec",
        metavar="NAME",
        help=f"record codec: {', '.join(BUILTIN_CODECS)}, or an installed plug-in's name",
    )
    serve.add_argument("--key", help="a constant key (data type) for every record")
    serve.add_argument("--results", help="results file (- for stdout)")
    serve.add_argument("--errors", help="errors file (- for stderr)")
    serve.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        help="a directory descriptor locations may point into (repeatable)",
    )
    serve.add_argument("--count", type=int, help="stop after this many records")
    serve.add_argument("--timeout-s", type=float, help="stop after this many seconds")
    serve.add_argument(
        "--http-port", type=int, help="serve the HTTP API on this port (0: any free port)"
    )
    serve.add_argument(
        "--runtime",
        help="embedded (the default: files and stdin/stdout), kafka (the [kafka] settings), "
        "or an installed plug-in runtime",
    )
    serve.set_defaults(handler=_serve)

    publish_model = commands.add_parser("publish-model", help="publish a model to Kafka")
    publish_model.add_argument("file", type=Path, help="model file, or a SavedModel folder")
    publish_model.add_argument("--key", required=True, help="the data type it serves")
    publish_model.add_argument("--type", help="model type (default: from the file extension)")
    publish_model.add_argument("--name", help="model name (default: the file name)")
    publish_model.add_argument("--version", default="")
    publish_model.add_argument("--description", default="")
    publish_model.add_argument("--output", default="AUTO", help="AUTO, VALUE or ARGMAX")
    publish_model.add_argument(
        "--option", action="append", default=[], help="a format option NAME=VALUE (repeatable)"
    )
    _sign_argument(publish_model)
    _kafka_arguments(publish_model)
    publish_model.set_defaults(handler=_publish_model)

    tombstone = commands.add_parser(
        "publish-tombstone", help="unload a key on every replica (a tombstone on the models topic)"
    )
    tombstone.add_argument("--key", required=True, help="the data type to unload")
    _sign_argument(tombstone)
    _kafka_arguments(tombstone)
    tombstone.set_defaults(handler=_publish_tombstone)

    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair to sign models with")
    keygen.add_argument(
        "keyfile", type=Path, help="the private key file to write (the public key: KEYFILE.pub)"
    )
    keygen.set_defaults(handler=_keygen)

    sign = commands.add_parser(
        "sign", help="sign models in a models folder (writes MODEL.sig beside each)"
    )
    sign.add_argument("keyfile", type=Path, help="the Ed25519 private key (PEM)")
    sign.add_argument(
        "models",
        type=Path,
        nargs="+",
        help="KEY/NAME.EXT model files, SavedModel folders or .desc files, where they are served",
    )
    sign.set_defaults(handler=_sign)

    publish_data = commands.add_parser("publish-data", help="publish records to Kafka")
    publish_data.add_argument(
        "file",
        type=Path,
        help="one record per line, or with --length-delimited, varint-framed binary records",
    )
    publish_data.add_argument("--rate", type=float, help="records per second (default: flat out)")
    publish_data.add_argument("--length-delimited", action="store_true")
    _kafka_arguments(publish_data)
    publish_data.set_defaults(handler=_publish_data)

    status = commands.add_parser("status", help="print the serving statistics of a server")
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
    return parser


def _demo(args: argparse.Namespace) -> int:
    from streamserve.demo.wine import DemoOptions, run_demo

    return run_demo(_console(), DemoOptions(args.rate, args.seconds_per_model))


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))  # logs and pipes: do not wrap tables
    return console


def _settings_from(args: argparse.Namespace) -> Settings:
    base = load_settings(args.config)
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
    api = (
        base.api if args.http_port is None else base.api.model_copy(update={"port": args.http_port})
    )
    update = {"embedded": embedded, "codec": codec, "serving": serving, "api": api}
    if args.runtime is not None:
        update["runtime"] = args.runtime
    return base.model_copy(update=update)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    codec = build_codec(settings.codec)
    serving = settings.serving
    router = load_router(serving.router, serving.router_options) if serving.router else None
    with ServingCore(serving, router=router) as core, ExitStack() as resources:
        runtime = build_runtime(settings.runtime, RuntimeContext(settings, core, codec, resources))
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: runtime.stop())
        if settings.api.port is not None:
            api = ApiServer(core, settings.api, runtime.ready.is_set, lambda: runtime.consumer_lag)
            api.start()
            resources.callback(api.stop)
            print(f"streamserve: HTTP API on {api.url}", file=sys.stderr, flush=True)
        summary = runtime.run(count=args.count, timeout_s=args.timeout_s)
    print(
        f"streamserve: {summary.records} records, {summary.results} results, "
        f"{summary.errors} errors, {summary.model_events} model events in "
        f"{summary.elapsed_s:.2f} s",
        file=sys.stderr,
    )
    return 0


def _kafka_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path, help="TOML settings file ([kafka] section)")
    command.add_argument("--bootstrap-servers", help="overrides kafka.bootstrap_servers")
    command.add_argument("--topic", help="default: kafka.models_topic / kafka.data_topics[0]")


def _sign_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--sign",
        type=Path,
        metavar="KEYFILE",
        help="sign with this Ed25519 private key (PEM; see streamserve keygen)",
    )


def _publisher(args: argparse.Namespace) -> tuple[Publisher, KafkaSettings]:
    kafka = load_settings(args.config).kafka
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
