"""Apache Kafka itself as the test broker: one KRaft node (broker and controller) on loopback.

The reference broker that Kafka behaviour is asserted against: transactions with a real
``read_committed``, log compaction, correct watermarks, the KIP-848 consumer protocol, logs that
survive a SIGKILL. tansu (``kafka_broker``) is the fast one with quirks; ``ApacheKafka`` offers
the same helpers as its ``Broker``, so a test switches brokers by swapping the fixture.

The jars come from Maven Central through ``kafka-broker/pom.xml``: ``scripts/kafka-broker.sh``
resolves them once into a cache folder (the install step, which needs Java 17 and Maven); the
fixture runs it, so a fresh clone resolves them on its first broker start.

A session-scoped broker in a conftest, with names unique to each test::

    @pytest.fixture(scope="session")
    def apache_kafka() -> Iterator[ApacheKafka]:
        with running_apache_kafka() as broker:
            yield broker

    @pytest.fixture
    def topic(request: pytest.FixtureRequest) -> str:
        return unique_name(request.node.name)

``running_apache_kafka(sasl_ssl=SaslSsl())`` opens a SASL_SSL listener beside the plaintext one
(which the tests' own admin, producer and readers keep using): TLS with a broker certificate from
a certificate authority made for that broker, and SCRAM-SHA-512 users created when the storage
is formatted; ``broker.sasl_ssl_settings("streamserve")`` are a client's librdkafka properties.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka_broker import Broker, free_port
from tls_certificates import CA_KEY_USAGE

KAFKA_VERSION = "4.4.0"
_REPO = Path(__file__).resolve().parents[1]
_RESOLVE_SCRIPT = _REPO / "scripts" / "kafka-broker.sh"
_LOG_CONFIG = _REPO / "kafka-broker" / "log4j2.xml"

# A test broker's JVM: a small heap with the serial collector (no G1 regions and GC threads)
# and the C1 compiler only (C2 competes for the 2 cores while the broker starts). Measured on
# 2 cores: first metadata answer after ~1.8 s instead of ~2.3 s with the JVM's defaults, RSS
# ~150 MB instead of ~215 MB; with the AppCDS archive (``class_sharing``) ~1.0 s. Client-bound
# throughput (~700k produced, ~170k consumed 100-byte records/s) is the same as with C2.
# Kafka's own scripts use -Xmx1G -Xms1G -XX:+UseG1GC, for production.
TEST_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms32m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)

# The usual single-node settings: internal topics with one replica, no wait before the first
# rebalance. Topics are not created by producing or fetching, as on most production clusters:
# a test creates its topics (with the partitions it means: Kafka would auto-create one, tansu
# four), and a client that names a missing topic fails as it would there.
TEST_BROKER_PROPERTIES: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    # The log cleaner allocates this on the heap at startup, 128 MiB by default: 8 MiB still
    # compacts ~300k keys per pass, and cuts the broker's RSS from ~280 MB to ~150 MB.
    "log.cleaner.dedupe.buffer.size": str(8 * 2**20),
    # After a SIGKILL the restarted node may register again only once its old session has
    # expired: 9 s by default, 3 s here (a restart after kill() takes ~4 s instead of ~11 s).
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}


class BrokerStartError(RuntimeError):
    """Apache Kafka could not be resolved, formatted or started; the message quotes its log."""


SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener to open beside the plaintext one: its SASL mechanism and its users.

    SCRAM users are created by the storage tool as it formats the log dir (``--add-scram``, the
    KRaft way); PLAIN users are listed in the listener's JAAS configuration. Names and passwords
    are letters, digits, ``-`` and ``_`` (they go into those option strings as they are).
    """

    mechanism: str = "SCRAM-SHA-512"
    users: Mapping[str, str] = field(
        default_factory=lambda: {"streamserve": "streamserve-secret", "admin": "admin-secret"}
    )

    def __post_init__(self) -> None:
        assert self.mechanism in SASL_MECHANISMS, f"{self.mechanism} is not in {SASL_MECHANISMS}"
        for text in (*self.users, *self.users.values()):
            assert re.fullmatch(r"[A-Za-z0-9_-]+", text), f"unsupported user or password {text!r}"


@dataclass(frozen=True)
class TlsFiles:
    """A certificate authority's certificate, and a broker's key and certificate it signed."""

    ca: Path  # PEM: the clients' ssl.ca.location
    keystore: Path  # PEM: the broker's private key (PKCS#8, unencrypted), then its certificate


def write_tls_files(folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A new certificate authority and a broker certificate it signed for ``hosts`` (IP
    addresses and DNS names, in the subject alternative names), as PEM files in ``folder``.
    P-256 keys, valid for a day. A second call makes another authority: a wrong CA for clients."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"streamserve test CA {uuid.uuid4().hex[:8]}")]
    )
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, [])
    broker_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    broker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    broker = _certificate(broker_name, ca_name, broker_key.public_key(), ca_key, names)
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder / "ca.pem", folder / "broker-keystore.pem")
    files.ca.write_bytes(ca.public_bytes(pem))
    key = broker_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.keystore.write_bytes(key + broker.public_bytes(pem))
    files.keystore.chmod(0o600)
    return files


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    alternative_names: list[x509.GeneralName],
) -> x509.Certificate:
    """A certificate: a CA's own when it has no ``alternative_names``, else a server's."""
    now = datetime.datetime.now(datetime.UTC)
    is_ca = not alternative_names
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(CA_KEY_USAGE, critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        ).add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def kafka_libs() -> Path:
    """The folder of Kafka's jars, from scripts/kafka-broker.sh (Maven once, then a stamp check)."""
    result = subprocess.run(
        ["bash", str(_RESOLVE_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BrokerStartError(
            f"{_RESOLVE_SCRIPT.name} could not resolve Apache Kafka's jars: {result.stderr.strip()}"
        )
    return Path(result.stdout.strip().splitlines()[-1])


def unique_name(prefix: str) -> str:
    """A topic or group name unique to this call, from any text (a test's node name, say)."""
    legal = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-")[:80] or "t"
    return f"{legal}-{uuid.uuid4().hex[:8]}"


@dataclass
class ApacheKafka(Broker):
    """A single-node Apache Kafka in KRaft mode, its data in ``workdir``.

    Beside tansu's helpers (``bootstrap``, ``create_topics``, ``produce``, ``read_all``,
    ``paused``), broker faults: ``kill()`` (SIGKILL), ``restart()`` on the same ports and log
    dir, and the process's ``rss_bytes()``. ``server.log`` in ``workdir`` is its log.
    """

    workdir: Path = Path()
    libs: Path = Path()
    jvm_options: tuple[str, ...] = TEST_JVM_OPTIONS
    class_sharing: bool = True
    start_timeout_s: float = 60.0
    archive_dump: Path | None = None
    sasl_ssl: SaslSsl | None = None  # the SASL_SSL listener's mechanism and users, if opened
    secure_bootstrap: str = ""  # its address
    tls: TlsFiles | None = None  # its CA and keystore

    def sasl_ssl_settings(
        self, username: str, password: str | None = None, ca_location: Path | None = None
    ) -> dict[str, str]:
        """A client's librdkafka properties for the SASL_SSL listener, as ``username`` with its
        password (or ``password``), trusting the broker's CA (or ``ca_location``)."""
        assert self.sasl_ssl is not None, "no SASL_SSL listener: running_apache_kafka(sasl_ssl=…)"
        assert self.tls is not None
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.sasl_ssl.mechanism,
            "sasl.username": username,
            "sasl.password": self.sasl_ssl.users[username] if password is None else password,
            "ssl.ca.location": str(ca_location or self.tls.ca),
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the broker process and wait until it answers a metadata request."""
        assert not self.running, "the broker is already running"
        self.process = _launch(self)
        _wait_until_ready(self, self.start_timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown); SIGKILL if it has not exited within ``timeout_s``."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the broker dies at once, its unflushed log is recovered on the next start."""
        if self.running:
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(timeout=30)
            _keep_class_archive(self)

    def restart(self) -> None:
        """Stop the broker if it runs, then start it again on the same ports and log dir."""
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        """The broker process's resident set size, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kilobytes = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert kilobytes is not None, "the broker process has no RSS: is it running?"
        return int(kilobytes.group(1)) * 1024

    def create_topics(
        self, *names: str, partitions: int = 4, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``names`` and wait until every partition of each has a leader."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topics = [NewTopic(n, partitions, 1, config=dict(config or {})) for n in names]
        for future in admin.create_topics(topics, operation_timeout=30).values():
            future.result(30)
        _wait_for_leaders(admin, names, timeout_s=30)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the broker's log and of its console, for error messages."""
        tails = []
        for name in ("server.log", "console.log"):
            path = self.workdir / name
            text = path.read_text(errors="replace") if path.exists() else ""
            tails.append(f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)


@contextmanager
def running_apache_kafka(
    properties: Mapping[str, str] | None = None,
    *,
    jvm_options: Sequence[str] = TEST_JVM_OPTIONS,
    class_sharing: bool = True,
    workdir: Path | None = None,
    start_timeout_s: float = 60.0,
    sasl_ssl: SaslSsl | None = None,
) -> Iterator[ApacheKafka]:
    """A freshly formatted broker on free 127.0.0.1 ports, stopped on exit, however it exits.

    ``properties`` are added to (or override) ``TEST_BROKER_PROPERTIES``: e.g.
    ``{"log.cleaner.backoff.ms": "100", "log.segment.bytes": "65536"}`` for compaction tests.
    The log dir is a temporary folder removed on exit, unless ``workdir`` is given.
    ``class_sharing`` maps the broker's classes from an AppCDS archive (see ``_class_archive``).
    ``sasl_ssl`` opens a SASL_SSL listener too (``secure_bootstrap``), its CA and keystore in
    ``workdir/tls``; ``bootstrap`` stays plaintext.
    """
    libs = kafka_libs()
    with _folder(workdir) as folder:
        broker_port, controller_port = free_port(), free_port()
        broker = ApacheKafka(
            f"127.0.0.1:{broker_port}",
            workdir=folder,
            libs=libs,
            jvm_options=tuple(jvm_options),
            class_sharing=class_sharing,
            start_timeout_s=start_timeout_s,
            sasl_ssl=sasl_ssl,
        )
        listeners = {"PLAINTEXT": broker_port, "CONTROLLER": controller_port}
        settings = {**TEST_BROKER_PROPERTIES, **(properties or {})}
        if sasl_ssl is not None:
            secure_port = free_port()
            broker.secure_bootstrap = f"127.0.0.1:{secure_port}"
            broker.tls = write_tls_files(folder / "tls")
            listeners["SASL_SSL"] = secure_port
            settings = {**_sasl_ssl_properties(sasl_ssl, broker.tls), **settings}
        _write_properties(folder, listeners, settings)
        _format_storage(broker)
        try:
            broker.start()
            yield broker
        finally:
            broker.stop()


@contextmanager
def _folder(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="apache-kafka-", ignore_cleanup_errors=True) as name:
        yield Path(name)


def _write_properties(folder: Path, ports: Mapping[str, int], settings: Mapping[str, str]) -> None:
    """server.properties: one listener per name in ``ports``, named as its security protocol
    (PLAINTEXT, SASL_SSL), but the CONTROLLER's (plaintext); brokers talk over PLAINTEXT."""
    listeners = {name: f"{name}://127.0.0.1:{port}" for name, port in ports.items()}
    node = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{ports['CONTROLLER']}",
        "listeners": ",".join(listeners.values()),
        "advertised.listeners": ",".join(v for k, v in listeners.items() if k != "CONTROLLER"),
        "listener.security.protocol.map": ",".join(
            f"{name}:{'PLAINTEXT' if name == 'CONTROLLER' else name}" for name in ports
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(folder / "data"),
    }
    lines = [f"{key}={value}" for key, value in {**node, **settings}.items()]
    (folder / "server.properties").write_text("\n".join(lines) + "\n")


def _sasl_ssl_properties(sasl_ssl: SaslSsl, tls: TlsFiles) -> dict[str, str]:
    """The SASL_SSL listener's settings: its PEM keystore (no client certificates asked for),
    its one mechanism and that mechanism's login module (with PLAIN, the users too)."""
    prefix = "listener.name.sasl_ssl."
    mechanism = sasl_ssl.mechanism
    if mechanism == "PLAIN":
        users = " ".join(f'user_{name}="{password}"' for name, password in sasl_ssl.users.items())
        jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
    else:
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return {
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(tls.keystore),
        f"{prefix}sasl.enabled.mechanisms": mechanism,
        f"{prefix}{mechanism.lower()}.sasl.jaas.config": jaas,
    }


def _java(broker: ApacheKafka, main_class: str, *arguments: str) -> list[str]:
    return [
        "java",
        *broker.jvm_options,
        *_class_sharing_options(broker, main_class),
        f"-Dkafka.logs.dir={broker.workdir}",
        f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
        "-cp",
        f"{broker.libs}/*",
        main_class,
        *arguments,
    ]


def _format_storage(broker: ApacheKafka) -> None:
    """Format the log dir as a new cluster whose only controller is this node (--standalone)."""
    config = str(broker.workdir / "server.properties")
    command = _java(broker, "kafka.tools.StorageTool", "format", "-t", _cluster_id())
    result = subprocess.run(
        [*command, "-c", config, "--standalone", *_scram_users(broker.sasl_ssl)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerStartError(
            f"Kafka's storage tool could not format {broker.workdir} "
            f"(exit {result.returncode}): {result.stdout}{result.stderr}"
        )


def _scram_users(sasl_ssl: SaslSsl | None) -> list[str]:
    """The storage tool's options that create the SCRAM users (KRaft has no ZooKeeper to hold
    them: they are metadata records, written as the log dir is formatted)."""
    if sasl_ssl is None or not sasl_ssl.mechanism.startswith("SCRAM-"):
        return []
    options = []
    for name, password in sasl_ssl.users.items():
        options += ["--add-scram", f"{sasl_ssl.mechanism}=[name={name},password={password}]"]
    return options


def _class_archive(libs: Path) -> Path:
    """The broker's classes as this JDK's AppCDS archive, beside the jars it was made from.

    Mapping it instead of loading ~7,000 classes from jars cuts startup by ~40%. The first
    broker that finds none dumps one as it stops (-XX:ArchiveClassesAtExit, ~2.5 s, once per
    machine and JDK); re-resolving the jars removes it with them; a JVM that finds it stale
    says so in console.log and loads the classes from the jars.
    """
    java = Path(shutil.which("java") or "java").resolve()
    stat = java.stat()
    key = hashlib.sha256(f"{java}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return libs / f".classes-{key[:12]}.jsa"


def _class_sharing_options(broker: ApacheKafka, main_class: str) -> list[str]:
    if not broker.class_sharing:
        return []
    archive = _class_archive(broker.libs)
    if archive.exists():
        return [f"-XX:SharedArchiveFile={archive}"]
    if main_class != "kafka.Kafka" or broker.archive_dump is not None:
        return []
    broker.archive_dump = archive.with_name(f"{archive.name}.{uuid.uuid4().hex}.partial")
    return [f"-XX:ArchiveClassesAtExit={broker.archive_dump}"]


def _keep_class_archive(broker: ApacheKafka) -> None:
    """The archive the JVM dumped as it exited becomes the one to use, unless it was killed."""
    dump, broker.archive_dump = broker.archive_dump, None
    if dump is None or not dump.exists():
        return
    if broker.process.returncode == -signal.SIGKILL:  # perhaps cut short: never use it
        dump.unlink()
    else:
        dump.replace(_class_archive(broker.libs))


def _cluster_id() -> str:
    """A random id as Kafka's Uuid.randomUuid() makes them: 16 bytes, URL-safe base64."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids these: they read as command-line options
            return text


def _launch(broker: ApacheKafka) -> subprocess.Popen[bytes]:
    """``java kafka.Kafka server.properties``, its console appended to ``console.log``.

    In its own session, so a Ctrl-C reaches only pytest, whose fixture then stops the broker in
    order; and killed by the kernel if the process that started it dies without cleaning up
    (setpriv --pdeathsig: a pytest-timeout thread exit, a SIGKILL), so no JVM is left behind.
    The kernel watches the starting *thread*: start brokers from one that outlives them.
    """
    command = _java(broker, "kafka.Kafka", str(broker.workdir / "server.properties"))
    if shutil.which("setpriv"):
        command = ["setpriv", "--pdeathsig", "KILL", *command]
    with (broker.workdir / "console.log").open("ab") as console:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_ready(broker: ApacheKafka, timeout_s: float) -> None:
    """Wait until the broker answers a metadata request naming itself: the broker is unfenced."""
    deadline = time.monotonic() + timeout_s
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    while not _accepts(port):
        _check_starting(broker, deadline)
        time.sleep(0.02)
    admin = AdminClient(
        {
            "bootstrap.servers": broker.bootstrap,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 200,
        }
    )
    while not _metadata_names_a_broker(admin, timeout_s=1.0):
        _check_starting(broker, deadline)
        time.sleep(0.02)


def _metadata_names_a_broker(admin: AdminClient, timeout_s: float) -> bool:
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _check_starting(broker: ApacheKafka, deadline: float) -> None:
    if not broker.running:
        code = broker.process.returncode
        raise BrokerStartError(f"Apache Kafka exited ({code}) while starting:\n{broker.log_tail()}")
    if time.monotonic() > deadline:
        raise BrokerStartError(
            f"Apache Kafka did not answer a metadata request within {broker.start_timeout_s} s:\n"
            f"{broker.log_tail()}"
        )


def _wait_for_leaders(admin: AdminClient, names: Sequence[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(
            name in topics and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        assert time.monotonic() < deadline, f"topics {list(names)} got no partition leaders"
        time.sleep(0.05)
