"""How the ``streamserve`` command presents itself: descriptions, examples, the help format,
and the logging options every subcommand takes. Plain text only: help is read in a terminal."""

from __future__ import annotations

import argparse
from typing import NamedTuple

from streamserve.logs import LOG_LEVELS, LogFormat

DESCRIPTION = """\
streamserve serves machine-learning models on streams. Records arrive on one stream and models
on another; each key (data type) has a current model, and a new model for a key replaces the
old one without a restart. Results and errors go to their own outputs."""

EPILOG = """\
examples:
  streamserve demo
      the wine demo: nine original models swapped in one after another while records stream
  streamserve serve --models models --data records.jsonl
      score a file with the models of a folder (models/KEY/NAME.onnx, .pmml, ...)
  streamserve serve --runtime kafka --config streamserve.toml --http-port 8080
      serve Kafka topics; the dashboard and the API at http://127.0.0.1:8080/
  streamserve status --url http://127.0.0.1:8080
      the serving statistics of a running server

"streamserve COMMAND --help" shows a command's options. Settings: docs/operations.md."""

DEFAULT_LOG_LEVEL = "WARNING"  # commands other than serve: their own output says enough


class CommandHelp(NamedTuple):
    summary: str  # one line, in the command list
    description: str  # paragraphs, filled to the terminal's width
    examples: str  # indented lines, kept as written


COMMANDS = {
    "demo": CommandHelp(
        "run the wine demo: the original models swapped in while records stream",
        """\
Streams the wine-quality data (1,599 records, looped) through the embedded runtime while the
original FLIP-23 models arrive one after another: the TensorFlow SavedModel, seven PMML models
and the TensorFlow frozen graph. Shows each swap as it happens and ends with the per-model
serving statistics.""",
        """\
  streamserve demo
  streamserve demo --rate 10000 --seconds-per-model 2
  streamserve demo --http-port 8080
      watch it at http://127.0.0.1:8080/ (or: streamserve status --url http://127.0.0.1:8080);
      the stream goes on after the last model until Ctrl-C""",
    ),
    "serve": CommandHelp(
        "serve models on a stream of records (files, stdin, or Kafka)",
        """\
Serves the models of a folder (or a Kafka models topic) on records from a file or stdin (or
Kafka data topics), writing one result or one error per record. Settings come from --config,
STREAMSERVE_* environment variables and the options below, which win. Log lines on stderr say
what the server does: connected, models caught up, partitions assigned and revoked, each swap
and rejection, and a summary line every logging.summary_interval_s (60 s).""",
        """\
  streamserve serve --models models --data records.jsonl --results results.jsonl
      models/KEY/NAME.EXT (onnx, pmml, pb, ...) serve the records of key KEY
  tail -f records.jsonl | streamserve serve --models models --http-port 8080
  streamserve serve --runtime kafka --config streamserve.toml --log-format json""",
    ),
    "publish-model": CommandHelp(
        "publish a model to the Kafka models topic",
        """\
Publishes a model file (or a SavedModel folder) as a FLIP-23 ModelDescriptor message, keyed by
the data type it serves. Every replica reading the models topic swaps it in.""",
        """\
  streamserve publish-model tree.pmml --key wine --bootstrap-servers 127.0.0.1:9092
  streamserve publish-model model.onnx --key wine --version 2 --sign signing.pem""",
    ),
    "publish-tombstone": CommandHelp(
        "unload a key on every replica (a tombstone on the models topic)",
        "Publishes a tombstone for a key: every replica unloads the key's models.",
        "  streamserve publish-tombstone --key wine --bootstrap-servers 127.0.0.1:9092",
    ),
    "keygen": CommandHelp(
        "make an Ed25519 key pair to sign models with",
        "Writes a private key and its public key, for servers that serve signed models only.",
        "  streamserve keygen signing.pem",
    ),
    "sign": CommandHelp(
        "sign models in a models folder (writes MODEL.sig beside each)",
        "Signs model files where they are served, for servers that serve signed models only.",
        "  streamserve sign signing.pem models/wine/tree.pmml models/beer/model.onnx",
    ),
    "publish-data": CommandHelp(
        "publish records to a Kafka data topic",
        "Publishes the records of a file, one message each, at a steady rate or flat out.",
        "  streamserve publish-data records.jsonl --rate 1000 --bootstrap-servers 127.0.0.1:9092",
    ),
    "status": CommandHelp(
        "print the serving statistics of a running server",
        "Prints the per-model statistics table of a server's HTTP API (its /keys).",
        """\
  streamserve status --url http://127.0.0.1:8080
  streamserve status --url https://streamserve.example:8443 --ca-file ca.pem""",
    ),
}


class HelpFormatter(argparse.HelpFormatter):
    """Fills the paragraphs of a description to the terminal's width and leaves the examples
    (``examples:`` blocks, indented lines) as they are written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            raw = block.startswith((" ", "examples:"))
            blocks.append(block if raw else super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
) -> argparse.ArgumentParser:
    """Adds the subcommand ``name`` with its help, examples and the logging options."""
    text = COMMANDS[name]
    command = commands.add_parser(
        name,
        help=text.summary,
        description=text.description,
        epilog=f"examples:\n{text.examples}",
        formatter_class=HelpFormatter,
        parents=[common],
    )
    command.set_defaults(default_log_level=DEFAULT_LOG_LEVEL)
    return command


def logging_options() -> argparse.ArgumentParser:
    """``--log-level`` and ``--log-format``, a parent parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="lines on stderr at this level and above (serve: INFO, the lifecycle and a "
        "periodic summary; other commands: WARNING); DEBUG adds the libraries' own lines",
    )
    group.add_argument(
        "--log-format",
        type=str.lower,
        choices=[str(f) for f in LogFormat],
        help="text (the default), or json: one JSON object per line, for log shippers",
    )
    return common
