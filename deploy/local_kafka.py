"""KRaft Kafka run from the Maven Central jars (no Docker needed): one node, or a cluster
of N nodes on loopback (each broker and controller, a controller quorum of N)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from deploy.processes import (
    DetachedServer,
    command_line,
    port_open,
    process_exists,
    spawn,
    tail,
)
from shared.erasure import ErasureBound
from shared.kafka import MAX_MESSAGE_BYTES
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

    def __init__(
        self, data_dir: Path, port: int = 9092, controller_port: int = 9093,
        authenticated: bool = True, erasure_max_days: float | None = None,
        node_id: int = 1, voters: dict[int, int] | None = None, replication_factor: int = 1,
        jar_cache: Path | None = None,
    ) -> None:
        super().__init__(data_dir, "kafka", port, _is_kafka_process)
        self.controller_port = controller_port
        # In a cluster: this node's id, every voter's controller port, and the replication
        # of the internal topics; alone: node 1, its own quorum, replication 1.
        self.node_id = node_id
        self.voters = voters or {node_id: controller_port}
        self.replication_factor = replication_factor
        self.jar_cache = jar_cache or self.data_dir / "cache"
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

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL: the node dies with nothing flushed or handed over (a crash)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while process_exists(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

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
        if not self.authenticated:
            settings = open_server_settings(self.port, self.controller_port, self.log_dirs)
        else:
            settings = server_settings(self.port, self.controller_port, self.log_dirs,
                                       self._admin_password())
        settings.update(self.erasure.broker_settings())
        settings.update(node_settings(self.node_id, self.voters, self.replication_factor))
        return "".join(f"{key}={value}\n" for key, value in settings.items())

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
        lib_dir = fetch_classpath(self.jar_cache)
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


def node_settings(
    node_id: int, voters: dict[int, int], replication_factor: int
) -> dict[str, str | int]:
    """What makes a node one of a cluster: its id, the quorum, and the replication (with
    `min.insync.replicas` 2 from three replicas: a write survives the loss of one node)."""
    min_insync = 2 if replication_factor >= 3 else 1
    quorum = ",".join(f"{voter}@127.0.0.1:{port}" for voter, port in sorted(voters.items()))
    return {
        "node.id": node_id,
        "controller.quorum.voters": quorum,
        "default.replication.factor": replication_factor,
        "min.insync.replicas": min_insync,
        "offsets.topic.replication.factor": replication_factor,
        "transaction.state.log.replication.factor": replication_factor,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": replication_factor,
        "share.coordinator.state.topic.min.isr": min_insync,
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


class LocalKafkaCluster:
    """N KRaft nodes on loopback under `<data_dir>/kafka`, one cluster id, one admin
    password; every node is a broker and a voter of the controller quorum. Duck-types the
    parts of LocalKafka that provisioning and the clients use (`home`, `bootstrap`,
    `admin_access`, `erasure`, `replication_factor`)."""

    name = "Kafka cluster"

    def __init__(
        self, data_dir: Path, brokers: int = 3, first_port: int | None = 9092,
        authenticated: bool = True, erasure_max_days: float | None = None,
        ports: list[tuple[int, int]] | None = None,
    ) -> None:
        """`ports`: (client, controller) per node; else consecutive pairs from `first_port`."""
        self.data_dir = Path(data_dir).resolve()
        self.home = self.data_dir / "kafka"
        if ports is None:
            start = 9092 if first_port is None else first_port
            ports = [(start + 2 * i, start + 2 * i + 1) for i in range(brokers)]
        voters = {i + 1: controller for i, (_client, controller) in enumerate(ports)}
        self.replication_factor = min(3, brokers)
        self.nodes = [
            LocalKafka(self.home / f"node-{i + 1}", port=client, controller_port=controller,
                       authenticated=authenticated, erasure_max_days=erasure_max_days,
                       node_id=i + 1, voters=voters,
                       replication_factor=self.replication_factor,
                       jar_cache=self.data_dir / "cache")
            for i, (client, controller) in enumerate(ports)
        ]
        self.erasure = self.nodes[0].erasure
        self.authenticated = authenticated
        self.admin_password_file = self.home / "admin.password"
        self.cluster_id_file = self.home / "cluster.id"

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def admin_access(self) -> KafkaAccess:
        return KafkaAccess(bootstrap=self.bootstrap, username=ADMIN_PRINCIPAL,
                           password=SecretStr(read_secret(self.admin_password_file)))

    def answers(self) -> bool:
        """A quorum answers: a majority of the nodes serve the admin."""
        if not self.admin_password_file.exists():
            return False
        serving = [node for node in self.nodes if node.answers()]
        return len(serving) > len(self.nodes) // 2

    def start(self, timeout: float = 120) -> None:
        """Launches every node, then waits for each: a node alone cannot answer before the
        quorum has a majority, so they cannot be started one after the other."""
        private_dir(self.home)
        password = read_or_create_secret(self.admin_password_file)
        cluster_id = _persisted_cluster_id(self.cluster_id_file)
        for node in self.nodes:
            private_dir(node.home)
            write_private(node.admin_password_file, password)
            write_private(node.cluster_id_file, cluster_id)
        fetch_classpath(self.data_dir / "cache")  # once, before the nodes race for it
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for started in [pool.submit(node.start, timeout) for node in self.nodes]:
                started.result()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def purge(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(f"node {node.node_id}:\n{node.log_tail(lines)}" for node in self.nodes)


async def partition_leaders(
    access: KafkaAccess, topic: str, timeout: float = 30
) -> dict[int, int]:
    """Partition -> the node id that leads it now. The admin client asks a node picked at
    random from its metadata, which can still name a node just killed: another is tried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _partition_leaders(access, topic)
        except (KafkaError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _partition_leaders(access: KafkaAccess, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**access.client_options(), request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for p in described[0]["partitions"]}


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
