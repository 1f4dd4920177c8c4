"""The server under soak: ``streamserve serve --runtime kafka`` in a process of its own (so
its RSS, descriptors and threads are its own), with the HTTP API on a free port and an admin
token, configured by a TOML file as an operator would.

The JVM that PMML models start in the process gets a fixed heap, touched in full at its start
(``JAVA_TOOL_OPTIONS``), as a deployment bounds it: otherwise the JVM grows its heap for minutes
(its default maximum is a quarter of the machine's memory), and that growth, which is no leak,
would show in RSS. What the JVM holds shows in the JVM columns instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.broker import BenchBroker

READY_TIMEOUT_S = 600.0  # the models topic's catch-up: every key's first model loads


@dataclass(frozen=True)
class Topics:
    data: str = "soak-data"
    models: str = "soak-models"
    results: str = "soak-results"
    errors: str = "soak-errors"


class ServerProcess:
    """A running server: its process, HTTP client and admin token; stopped by SIGTERM."""

    def __init__(
        self,
        folder: Path,
        broker: BenchBroker,
        topics: Topics,
        *,
        jvm_heap_mib: int = 256,
    ) -> None:
        self.admin_token = secrets.token_urlsafe(24)
        self.config = folder / "streamserve.toml"
        self.config.write_text(_config(broker, topics, self.admin_token))
        self.log = folder / "server.log"
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if jvm_heap_mib:
            heap = f"-Xms{jvm_heap_mib}m -Xmx{jvm_heap_mib}m -XX:+AlwaysPreTouch"
            environment["JAVA_TOOL_OPTIONS"] = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} {heap}"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    *[sys.executable, "-m", "streamserve", "serve"],
                    *["--config", str(self.config), "--http-port", "0"],
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environment,
            )
        self.api = httpx.Client(base_url=self._wait_for_api(), timeout=30)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for_api(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            announced = re.search(r"HTTP API on (http://\S+)", self.log.read_text())
            if announced:
                return announced.group(1)
            self.check_running()
            time.sleep(0.2)
        raise RuntimeError(f"the server announced no HTTP API: {self.log_tail()}")

    def wait_ready(self) -> None:
        """Until ``/v2/health/ready``: every model of the models topic loaded, data assigned."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.api.get("/v2/health/ready").status_code != 200:
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in time: {self.log_tail()}")
            time.sleep(0.5)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {self.process.returncode}: {self.log_tail()}"
            )

    def stop(self) -> int:
        """SIGTERM, then its exit code (it commits and closes cleanly: 0); again: the code."""
        self.api.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]


def _config(broker: BenchBroker, topics: Topics, admin_token: str) -> str:
    """The server's settings file: Kafka, the wine protobuf codec, the API's admin token."""
    return f"""runtime = "kafka"

[codec]
format = "wine-protobuf"

[api]
admin_token = "{admin_token}"

[kafka]
bootstrap_servers = "{broker.bootstrap}"
group_id = "soak"
data_topics = ["{topics.data}"]
models_topic = "{topics.models}"
results_topic = "{topics.results}"
errors_topic = "{topics.errors}"
consumer = {{ {_inline_table(broker.consumer)} }}
"""


def _inline_table(settings: Mapping[str, str | int | bool]) -> str:
    """librdkafka settings as the entries of a TOML inline table (the broker's workarounds)."""
    return ", ".join(
        f"{json.dumps(name)} = {json.dumps(value)}" for name, value in settings.items()
    )
