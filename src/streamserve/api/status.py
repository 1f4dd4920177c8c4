"""``streamserve status``: the FLIP-23-style statistics table of a running server."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from streamserve.serving.slot import ModelRole

FETCH_TIMEOUT_S = 10.0


def print_status(
    console: Console,
    url: str,
    *,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
) -> int:
    """Prints the statistics table of the server at ``url``; 2 if it cannot be read.

    An ``https`` URL is verified against ``ca_file`` (default: the system's CA certificates,
    or ``SSL_CERT_FILE``); ``client_cert`` (a PEM file holding the key and the certificate) is
    presented to a server that asks for one (``api.tls_ca_certs``).
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(client_cert)
        target = f"{url.rstrip('/')}/keys"
        with urllib.request.urlopen(target, timeout=FETCH_TIMEOUT_S, context=context) as reply:  # noqa: S310 - the operator's URL
            state = orjson.loads(reply.read())
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as err:
        console.print(f"streamserve: cannot read the serving state from {url}: {err}")
        return 2
    table = Table(title=f"Serving statistics at {url} (µs per record, amortized per batch)")
    for column in (
        "key",
        "model",
        "version",
        "state",
        "since",
        "invocations",
        "errors",
        "avg µs",
        "min µs",
        "max µs",
    ):
        table.add_column(column, no_wrap=True)
    for slot in state["keys"]:
        for role in ModelRole:  # the document has one entry per role, null if none holds it
            if slot[role] is not None:
                table.add_row(slot["key"], *_cells(slot[role], role))
    console.print(table)
    counts = state["counts"]
    console.print(
        f"{counts.get('records', 0):,} records, {counts.get('results', 0):,} results, "
        f"{counts.get('errors', 0):,} errors; {state['loads_pending']} loads pending"
    )
    return 0


def _cells(model: dict[str, Any], role: ModelRole) -> list[str]:
    since = datetime.fromtimestamp(model["since"]).strftime("%H:%M:%S") if model["since"] else "-"
    return [
        model["name"],
        model["version"],
        str(role),
        since,
        f"{model['invocations']:,}",
        f"{model['errors']:,}",
        f"{model['average_duration_s'] * 1e6:.2f}",
        f"{model['min_duration_s'] * 1e6:.2f}",
        f"{model['max_duration_s'] * 1e6:.2f}",
    ]
