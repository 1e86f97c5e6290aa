"""KRaft Kafka run from the Maven Central jars (no Docker needed): one node, or a cluster
of N nodes on loopback (`LocalKafkaCluster`)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from deploy.processes import DetachedServer, command_line, port_open, spawn, tail
from shared.erasure import ErasureBound
from shared.kafka import MAX_MESSAGE_BYTES, min_insync_replicas, replication_factor_for
from shared.kafka import partition_leaders as partition_leaders  # part of this interface
from shared.kafka_access import SCRAM_MECHANISM, KafkaAccess
from shared.private_files import (
    OWNER_ONLY_UMASK,
    loose_bits,
    private_dir,
    read_or_create_secret,
    read_secret,
    write_private,
)
from shared.settings import Settings

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM_FILE = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"
COPY_DEPENDENCIES = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
POM_MARKER = ".pom-sha256"
LOG_TAIL_LINES = 40
ADMIN_PRINCIPAL = "admin"

T = TypeVar("T")


def fetch_classpath(cache_dir: Path) -> Path:
    """Copy the broker's runtime jars to `<cache_dir>/kafka-libs`, unless done for this POM."""
    lib_dir = Path(cache_dir).resolve() / "kafka-libs"
    digest = _pom_digest()
    with _file_lock(lib_dir.parent / ".kafka-libs.lock"):
        if not _marker_matches(lib_dir / POM_MARKER, digest):
            if lib_dir.exists():
                shutil.rmtree(lib_dir)
            private_dir(lib_dir)
            _copy_dependencies(lib_dir)
            write_private(lib_dir / POM_MARKER, digest)
        _owner_only(lib_dir)
    return lib_dir


def _owner_only(folder: Path) -> None:
    """Maven copies the jars with its repository's modes: take group and other bits off."""
    for path in (folder, *folder.iterdir()):
        if loose_bits(path):
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o077)


def broker_answers(access: KafkaAccess, timeout_ms: int = 5000) -> bool:
    """True when a Kafka node at `access.bootstrap` lets this principal in and answers an
    admin `describe_cluster`."""
    if not any(port_open(port, host) for host, port in _addresses(access.bootstrap)):
        return False
    try:
        run_sync(_describe_cluster(access, timeout_ms))
    except (TimeoutError, KafkaError, OSError):
        return False
    return True


class LocalKafka(DetachedServer):
    """One KRaft node (broker and controller) with its state under `<data_dir>/kafka`.

    It accepts only SASL/SCRAM-SHA-512 clients; its own principal, `admin`, is the super
    user, whose password is generated at the first start (`admin.password`, 0600) and
    written into the storage at format time (KIP-900), before any client can connect. The
    controller listener (loopback) takes SASL/PLAIN from the same principal only.
    """

    name = "Kafka"
    start_timeout = 90.0
    stop_timeout = 30.0
    ready_poll = 0.5

    node_id = 1
    replication_factor = 1  # of the topics the stack creates on it

    def __init__(
        self, data_dir: Path, port: int = 9092, controller_port: int = 9093,
        authenticated: bool = True, erasure_max_days: float | None = None,
        folder: str = "kafka",
    ) -> None:
        super().__init__(data_dir, folder, port, _is_kafka_process)
        self.controller_port = controller_port
        # The cleaner's and the retention check's pace follow the erasure bound.
        self.erasure = ErasureBound(erasure_max_days or Settings().erasure_max_days)
        # False only for `make bench`'s reference broker, which measures what SASL costs:
        # nothing of the project connects to an open broker.
        self.authenticated = authenticated
        self.log_dirs = self.home / "logs"
        self.properties_file = self.home / "server.properties"
        self.server_log = self.home / "server.log"
        self.console_log = self.home / "kafka.out"
        self.cluster_id_file = self.home / "cluster.id"
        self.admin_password_file = self.home / "admin.password"

    @property
    def bootstrap(self) -> str:
        return self.address

    def admin_access(self) -> KafkaAccess:
        """The super user's credentials (made at the first start: none before it)."""
        return KafkaAccess(bootstrap=self.bootstrap, username=ADMIN_PRINCIPAL,
                           password=SecretStr(read_secret(self.admin_password_file)))

    def _admin_password(self) -> str:
        return read_or_create_secret(self.admin_password_file)

    def purge(self) -> None:
        """Stop the node and delete its data (topics, offsets), keeping the jar cache."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tails = (tail(path, lines) for path in (self.console_log, self.server_log))
        return "\n".join(text for text in tails if text)

    def answers(self) -> bool:
        if not self.authenticated:
            return open_broker_answers(self.bootstrap)
        return self.admin_password_file.exists() and broker_answers(self.admin_access())

    def _ensure_ports_free(self) -> None:
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise RuntimeError(f"127.0.0.1:{port} is taken by a process not started here")

    def _prepare(self, lib_dir: Path) -> None:
        private_dir(self.home)
        private_dir(self.log_dirs)  # the topics: personal data until erased
        write_private(self.properties_file, self._server_properties())
        if not (self.log_dirs / "meta.properties").exists():
            self._format_storage(lib_dir)

    def _server_properties(self) -> str:
        settings = self._settings()
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _settings(self) -> dict[str, str | int]:
        if not self.authenticated:
            settings = open_server_settings(self.port, self.controller_port, self.log_dirs)
        else:
            settings = server_settings(self.port, self.controller_port, self.log_dirs,
                                       self._admin_password())
        settings.update(self.erasure.broker_settings())
        return settings

    def _format_storage(self, lib_dir: Path) -> None:
        cluster_id = _persisted_cluster_id(self.cluster_id_file)
        args = ["format", "-t", cluster_id, "-c", str(self.properties_file), "--ignore-formatted"]
        if self.authenticated:
            user = f"name={ADMIN_PRINCIPAL},password={self._admin_password()}"
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[{user}]"]
        command = self._java_command(lib_dir, "kafka.tools.StorageTool", args)
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, umask=OWNER_ONLY_UMASK
        )
        if result.returncode != 0:
            raise RuntimeError(f"Kafka storage format failed:\n{result.stdout}{result.stderr}")

    def _launch(self) -> subprocess.Popen[bytes]:
        self._ensure_ports_free()
        lib_dir = fetch_classpath(self.data_dir / "cache")
        self._prepare(lib_dir)
        command = self._java_command(lib_dir, "kafka.Kafka", [str(self.properties_file)])
        return spawn(command, self.home, self.console_log, self.pid_file)

    def _java_command(self, lib_dir: Path, main_class: str, args: list[str]) -> list[str]:
        return [
            _java_binary(),
            "-Xms256m",
            "-Xmx768m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-De2c.kafka.log.file={self.server_log}",
            "-cp",
            f"{lib_dir}/*",
            main_class,
            *args,
        ]


def server_settings(
    port: int, controller_port: int, log_dirs: Path, admin_password: str
) -> dict[str, str | int]:
    return {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"CLIENTS://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"CLIENTS://127.0.0.1:{port}",
        "inter.broker.listener.name": "CLIENTS",
        **security_settings(admin_password),
        "log.dirs": str(log_dirs),
        "num.partitions": 3,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "auto.create.topics.enable": "false",  # topics are created by the stack, as admin
        "message.max.bytes": MAX_MESSAGE_BYTES,  # the producers' and topics' limit too
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 10,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
    }


def open_server_settings(
    port: int, controller_port: int, log_dirs: Path
) -> dict[str, str | int]:
    """The same broker without authentication: the benchmark's reference only."""
    settings = server_settings(port, controller_port, log_dirs, "unused")
    for key in security_settings("unused"):
        settings.pop(key)
    settings["listener.security.protocol.map"] = "CLIENTS:PLAINTEXT,CONTROLLER:PLAINTEXT"
    return settings


def open_broker_answers(bootstrap: str) -> bool:
    if not any(port_open(port, host) for host, port in _addresses(bootstrap)):
        return False
    try:
        run_sync(_describe_open_cluster(bootstrap))
    except (TimeoutError, KafkaError, OSError):
        return False
    return True


async def _describe_open_cluster(bootstrap: str) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def security_settings(admin_password: str) -> dict[str, str | int]:
    """SASL on every listener, SCRAM-SHA-512 for clients, ACLs with nothing allowed by
    default; `admin` (the broker's own principal) is the only super user."""
    scram_login = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN_PRINCIPAL}" password="{admin_password}";'
    )
    # SCRAM users live in the metadata log, which controllers need before they can read
    # it: the controller listener takes PLAIN with its one user declared here.
    plain_login = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN_PRINCIPAL}" password="{admin_password}" '
        f'user_{ADMIN_PRINCIPAL}="{admin_password}";'
    )
    return {
        "listener.security.protocol.map": "CLIENTS:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.clients.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "listener.name.clients.scram-sha-512.sasl.jaas.config": scram_login,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain_login,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{ADMIN_PRINCIPAL}",
        "allow.everyone.if.no.acl.found": "false",
    }


def new_cluster_id() -> str:
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        # A leading "-" would be read as an option by the storage tool (Kafka avoids it too).
        if not cluster_id.startswith("-"):
            return cluster_id


def _persisted_cluster_id(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    cluster_id = new_cluster_id()
    write_private(path, cluster_id)
    return cluster_id


def _pom_digest() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def _marker_matches(marker: Path, digest: str) -> bool:
    return marker.exists() and marker.read_text().strip() == digest


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    private_dir(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_dependencies(lib_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven")
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM_FILE),
        COPY_DEPENDENCIES,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={lib_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Fetching the Kafka jars failed:\n{result.stdout}{result.stderr}")


def _java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Java 17+ is needed to run Kafka (openjdk-17-jre-headless)")
    return java


async def _describe_cluster(access: KafkaAccess, timeout_ms: int) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(**access.client_options(), request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    hosts = [address.strip().rpartition(":") for address in bootstrap.split(",")]
    return [(host or "127.0.0.1", int(port)) for host, _, port in hosts]


def _is_kafka_process(pid: int) -> bool:
    args = command_line(pid)
    return bool(args) and Path(args[0]).name == "java" and "kafka.Kafka" in args


# --- a cluster of N nodes on loopback ------------------------------------------------------

# How soon the controllers notice a node gone (the defaults, 2 s and 9 s, make a leader
# election after a crash take about ten seconds; loopback needs no such margin).
FAILOVER_SETTINGS: dict[str, str | int] = {
    "broker.heartbeat.interval.ms": 500,
    "broker.session.timeout.ms": 3000,
}


def cluster_settings(node_id: int, voters: str, brokers: int) -> dict[str, str | int]:
    """What a node of a cluster of `brokers` sets beyond a single node's settings: its id,
    the controller quorum (static voters, every node), and replication of the internal
    topics and of the topics created without an explicit factor."""
    factor = replication_factor_for(brokers)
    in_sync = min_insync_replicas(factor)
    return {
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "default.replication.factor": factor,
        "min.insync.replicas": in_sync,
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": in_sync,
        **FAILOVER_SETTINGS,
    }


class ClusterNode(LocalKafka):
    """Node `node_id` of a `LocalKafkaCluster`: broker and controller, its state under
    `<data_dir>/kafka-<id>`, the cluster's id and admin password shared with the others."""

    def __init__(
        self, cluster: LocalKafkaCluster, node_id: int, port: int, controller_port: int,
        voters: str,
    ) -> None:
        super().__init__(cluster.data_dir, port, controller_port, cluster.authenticated,
                         cluster.erasure.max_days, folder=f"kafka-{node_id}")
        self.name = f"Kafka node {node_id}"
        self.node_id = node_id
        self.voters = voters
        self.brokers = len(voters.split(","))
        self.replication_factor = replication_factor_for(self.brokers)
        self.cluster_id_file = cluster.cluster_id_file
        self.admin_password_file = cluster.admin_password_file

    def _admin_password(self) -> str:
        # Made by the cluster before any node starts: nodes never race to create it.
        return read_secret(self.admin_password_file)

    def _settings(self) -> dict[str, str | int]:
        settings = super()._settings()
        settings.update(cluster_settings(self.node_id, self.voters, self.brokers))
        return settings


class LocalKafkaCluster:
    """N KRaft nodes on 127.0.0.1, each broker and controller (a quorum of N voters).

    Node i (1..N) listens for clients on `first_port + 2(i-1)` and for the controllers on
    the next port. Every listener authenticates as a single node's do (SASL/SCRAM for
    clients and between brokers, PLAIN between controllers), with the one `admin` super
    user formatted into every node's storage. What the nodes share (cluster id, admin
    password, the stack's principals) lives in `<data_dir>/kafka-cluster`.
    """

    name = "Kafka cluster"

    def __init__(
        self, data_dir: Path, brokers: int = 3, first_port: int = 9092,
        authenticated: bool = True, erasure_max_days: float | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("a cluster has one node or more")
        self.data_dir = Path(data_dir).resolve()
        self.home = self.data_dir / "kafka-cluster"
        self.authenticated = authenticated
        self.erasure = ErasureBound(erasure_max_days or Settings().erasure_max_days)
        self.cluster_id_file = self.home / "cluster.id"
        self.admin_password_file = self.home / "admin.password"
        ports = [(first_port + 2 * i, first_port + 2 * i + 1) for i in range(brokers)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller}"
                          for i, (_, controller) in enumerate(ports))
        self.nodes: list[LocalKafka] = [
            ClusterNode(self, i + 1, port, controller, voters)
            for i, (port, controller) in enumerate(ports)
        ]
        self.bootstrap = ",".join(node.address for node in self.nodes)
        self.replication_factor = replication_factor_for(brokers)

    @property
    def port(self) -> int:
        """The first node's client port (one address of the bootstrap list)."""
        return self.nodes[0].port

    @property
    def pid(self) -> int | None:
        """A running node's pid (None when none runs)."""
        return next((node.pid for node in self.nodes if node.pid is not None), None)

    def node(self, node_id: int) -> LocalKafka:
        if not 1 <= node_id <= len(self.nodes):
            raise KeyError(f"no node {node_id} in a cluster of {len(self.nodes)}")
        return self.nodes[node_id - 1]

    def start(self, timeout: float | None = None) -> None:
        """Launch every node that is not running, then wait for each: a node finishes its
        start only once a majority of the controllers run, so none is waited for alone."""
        private_dir(self.home)
        read_or_create_secret(self.admin_password_file)
        _persisted_cluster_id(self.cluster_id_file)
        launched = [(node, node.launch()) for node in self.nodes]
        for node, child in launched:
            node.wait_answering(child, timeout)

    def stop(self) -> None:
        """SIGTERM to every node at once: stopped one by one, the last ones would wait for a
        controller quorum that is gone before they shut down."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))

    def is_running(self) -> bool:
        return any(node.is_running() for node in self.nodes)

    def purge(self) -> None:
        """Stop the nodes and delete their data and the cluster's id, users and passwords."""
        self.stop()
        for node in self.nodes:
            shutil.rmtree(node.home, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def admin_access(self) -> KafkaAccess:
        """The super user, with every node in the bootstrap list."""
        return KafkaAccess(bootstrap=self.bootstrap, username=ADMIN_PRINCIPAL,
                           password=SecretStr(read_secret(self.admin_password_file)))

    def answers(self) -> bool:
        """True when the cluster answers an admin `describe_cluster` with a majority of its
        brokers registered and alive."""
        if not self.authenticated:
            return open_broker_answers(self.bootstrap)
        if not self.admin_password_file.exists():
            return False
        try:
            described = run_sync(_describe_cluster(self.admin_access(), 5000))
        except (TimeoutError, KafkaError, OSError):
            return False
        return len(described["brokers"]) > len(self.nodes) // 2

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(f"--- {node.name}\n{node.log_tail(lines)}" for node in self.nodes)


# Where the stack's principals, the admin password and the topics live: one node or many.
LocalBrokers = LocalKafka | LocalKafkaCluster

