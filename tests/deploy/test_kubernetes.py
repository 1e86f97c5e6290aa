"""deploy/kubernetes/: the manifests an operator applies, checked against the code.

The core kinds (Deployment, Service, PodDisruptionBudget, Secret) are validated with
kubernetes-validate's strict schemas of Kubernetes 1.30. Strimzi's and CloudNativePG's
custom resources are not in those schemas: they are checked here structurally (apiVersion,
kind, the fields their operators require) and, above all, against what the code creates:
the topics and their settings, each user's ACLs, the probes' routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import iter_route_contexts

from console.app import create_app
from deploy import kubernetes_manifests as generator
from deploy.kafka_security import FIXED_ROLES, SERVICE_ROLES, Grant, grants
from deploy.system import BROKER_TOPICS, JOURNALS, service_http_app
from shared.erasure import ErasureBound
from shared.kafka import topic_config
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
CUSTOM = {
    ("kafka.strimzi.io/v1", "Kafka"), ("kafka.strimzi.io/v1", "KafkaNodePool"),
    ("kafka.strimzi.io/v1", "KafkaTopic"), ("kafka.strimzi.io/v1", "KafkaUser"),
    ("postgresql.cnpg.io/v1", "Cluster"), ("postgresql.cnpg.io/v1", "Database"),
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DAY_MS = 24 * 3600 * 1000


def files() -> list[Path]:
    return sorted(ROOT.rglob("*.yaml"))


def documents(path: Path | None = None) -> Iterator[dict[str, Any]]:
    for file in [path] if path else files():
        yield from (d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def is_core(document: dict[str, Any]) -> bool:
    return (document["apiVersion"], document["kind"]) not in CUSTOM


# --- the files are the generator's ---------------------------------------------------------


def test_the_files_are_what_the_code_generates() -> None:
    wanted = generator.manifests()
    assert {str(p.relative_to(ROOT)) for p in files()} == set(wanted)
    for relative, docs in wanted.items():
        assert (ROOT / relative).read_text(encoding="utf-8") == generator.render(docs), relative
    assert generator.main(["--check"]) == 0


def test_the_check_fails_when_the_codes_acls_change(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    real = generator.grants
    monkeypatch.setattr(generator, "grants", lambda principal: [
        *real(principal), Grant("topic", "e2c.somewhere.v1", "write")])

    assert generator.main(["--check"]) == 1
    assert capsys.readouterr().out == "differs: deploy/kubernetes/users.yaml\n"


def test_the_check_fails_when_the_codes_topic_settings_change(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = generator.topic_config
    monkeypatch.setattr(generator, "topic_config", lambda *args: {
        **real(*args), "retention.ms": "86400000"})

    assert generator.main(["--check"]) == 1
    assert capsys.readouterr().out == "differs: deploy/kubernetes/topics.yaml\n"


def test_the_check_fails_when_the_code_has_another_topic(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(generator, "BROKER_TOPICS", (*BROKER_TOPICS, "e2c.new.v1"))

    assert generator.main(["--check"]) == 1
    assert capsys.readouterr().out == "differs: deploy/kubernetes/topics.yaml\n"


# --- core kinds: the Kubernetes schemas ----------------------------------------------------


def test_every_core_manifest_is_valid_for_kubernetes_1_30() -> None:
    core = [d for d in documents() if is_core(d)]
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert {d["kind"] for d in core} == CORE_KINDS
    assert len(of_kind("Deployment")) == 5  # three services, the console, Redis


def test_the_validator_refuses_a_broken_deployment() -> None:
    broken = of_kind("Deployment")[0]
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = of_kind("Service")[0]
    unknown["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


# --- custom resources: structure -----------------------------------------------------------


def test_custom_resources_have_their_kinds_names_and_specs() -> None:
    custom = [d for d in documents() if not is_core(d)]
    assert {(d["apiVersion"], d["kind"]) for d in custom} == CUSTOM
    for document in custom:
        assert DNS_SUBDOMAIN.fullmatch(document["metadata"]["name"]), document["metadata"]
        assert isinstance(document["spec"], dict) and document["spec"]
    strimzi = [d for d in custom if d["apiVersion"].startswith("kafka.strimzi.io")]
    for document in strimzi:
        if document["kind"] != "Kafka":
            assert document["metadata"]["labels"]["strimzi.io/cluster"] == "e2c"


def test_the_kafka_cluster_is_three_kraft_nodes_with_scram_and_acls() -> None:
    (pool,) = of_kind("KafkaNodePool")
    (kafka,) = of_kind("Kafka")
    assert pool["spec"]["replicas"] == 3
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    assert pool["spec"]["storage"]["type"] in {"jbod", "persistent-claim"}
    spec = kafka["spec"]["kafka"]
    assert "zookeeper" not in kafka["spec"]
    assert spec["listeners"], "no listener"
    for listener in spec["listeners"]:  # no anonymous path
        assert listener["authentication"] == {"type": "scram-sha-512"}
        assert {"name", "port", "type", "tls"} <= set(listener)
    assert spec["authorization"] == {"type": "simple", "superUsers": ["admin"]}
    config = spec["config"]
    assert config["allow.everyone.if.no.acl.found"] is False
    assert config["auto.create.topics.enable"] is False
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["message.max.bytes"] == 1024 * 1024
    assert {"topicOperator", "userOperator"} <= set(kafka["spec"]["entityOperator"])


# Strimzi 1.2's KafkaClusterSpec.FORBIDDEN_PREFIXES: the operator sets these itself and
# ignores them in `config` (a setting the code relies on would silently be lost).
STRIMZI_FORBIDDEN = (
    "listeners", "advertised.", "broker.", "listener.", "host.name", "port",
    "inter.broker.listener.name", "sasl.", "ssl.", "security.", "password.", "log.dir",
    "zookeeper.", "authorizer.", "super.user", "cruise.control.metrics.topic",
    "node.id", "process.roles", "controller.", "metadata.log.dir", "client.quota.callback.",
    "prometheus.metrics.reporter.", "cordoned.log.dirs",
)


def test_the_broker_settings_are_ones_strimzi_passes_on() -> None:
    (kafka,) = of_kind("Kafka")
    config = kafka["spec"]["kafka"]["config"]
    assert [key for key in config if key.startswith(STRIMZI_FORBIDDEN)] == []
    # The erasure's delays reach the brokers.
    assert ErasureBound(Settings().erasure_max_days).broker_settings().items() <= config.items()


def test_postgresql_is_a_cloudnativepg_cluster_with_a_database_per_service() -> None:
    (cluster,) = of_kind("Cluster")
    assert cluster["spec"]["instances"] >= 2 and cluster["spec"]["storage"]["size"]
    databases = {cluster["spec"]["bootstrap"]["initdb"]["database"],
                 *(d["spec"]["name"] for d in of_kind("Database"))}
    assert databases == {"referrals", "aids", "outcomes"}
    for database in of_kind("Database"):
        assert database["spec"]["cluster"] == {"name": cluster["metadata"]["name"]}
        assert database["spec"]["owner"] == cluster["spec"]["bootstrap"]["initdb"]["owner"]


# --- topics: what the code creates ---------------------------------------------------------


def test_the_topics_are_every_topic_the_code_creates() -> None:
    topics = of_kind("KafkaTopic")
    names = [t["spec"]["topicName"] for t in topics]
    assert sorted(names) == sorted(map(str, BROKER_TOPICS))
    assert len(names) == 12  # the contract's 11 and the referrals' erasure journal
    for topic in topics:
        assert topic["metadata"]["name"] == topic["spec"]["topicName"]
        assert topic["spec"]["partitions"] == Settings().topic_partitions == 3
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == "2"


def test_each_topic_has_the_settings_the_code_gives_it() -> None:
    bound = ErasureBound(Settings().erasure_max_days)
    for topic in of_kind("KafkaTopic"):
        name = topic["spec"]["topicName"]
        wanted = {**topic_config(name, bound, JOURNALS), "min.insync.replicas": "2"}
        assert topic["spec"]["config"] == wanted, name


def test_retention_and_compaction_by_topic() -> None:
    """Counted by hand from the erasure bound of 7 days (shared/erasure.py's shares)."""
    configs = {t["spec"]["topicName"]: t["spec"]["config"] for t in of_kind("KafkaTopic")}
    submitted = configs.pop("e2c.referrals.submitted.v1")
    assert submitted["cleanup.policy"] == "compact"
    assert submitted["max.compaction.lag.ms"] == str(7 * DAY_MS // 4)
    assert submitted["delete.retention.ms"] == str(7 * DAY_MS)
    dead = configs.pop("e2c.deadletter.v1")
    assert dead["cleanup.policy"] == "delete"
    assert dead["retention.ms"] == str(7 * DAY_MS // 2)
    journal = configs.pop("e2c.referrals.erasures.v1")
    assert (journal["cleanup.policy"], journal["retention.ms"]) == ("compact", "-1")
    for name, config in configs.items():  # the system of record: kept forever
        assert config["retention.ms"] == "-1", name
        assert "cleanup.policy" not in config, name  # the broker's default, delete


# --- users: the ACLs of the trust boundary -------------------------------------------------


def grant_of(acl: dict[str, Any]) -> Grant:
    resource = acl["resource"]
    (operation,) = acl["operations"]
    assert acl["host"] == "*"
    return Grant(resource["type"], resource.get("name", "kafka-cluster"), operation.lower(),
                 resource.get("patternType") == "prefix")


def test_every_role_and_a_partner_has_a_scram_user() -> None:
    users = {u["metadata"]["name"]: u for u in of_kind("KafkaUser")}
    assert set(users) == {*FIXED_ROLES, "partner-example"}
    for user in users.values():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
    assert "authorization" not in users["admin"]["spec"]  # a super user (the Kafka's list)


def test_each_users_acls_equal_the_grants_of_the_code() -> None:
    users = [u for u in of_kind("KafkaUser") if u["metadata"]["name"] != "admin"]
    assert len(users) == 7
    for user in users:
        name = user["metadata"]["name"]
        authorization = user["spec"]["authorization"]
        assert authorization["type"] == "simple"
        acls = [grant_of(acl) for acl in authorization["acls"]]
        assert len(acls) == len(set(acls))
        assert set(acls) == set(grants(name)), name
        assert acls, name


def test_a_partner_may_only_write_the_submitted_referrals() -> None:
    (partner,) = [u for u in of_kind("KafkaUser") if u["metadata"]["name"] == "partner-example"]
    assert partner["spec"]["authorization"]["acls"] == [{
        "resource": {"type": "topic", "name": "e2c.referrals.submitted.v1",
                     "patternType": "literal"},
        "operations": ["Write"], "host": "*"}]


# --- deployments: probes, resources, secrets -----------------------------------------------


def app_routes(app: str) -> set[str]:
    served = service_http_app(app) if app in SERVICE_ROLES else create_app(Settings())
    return {str(context.path) for context in iter_route_contexts(served.routes)
            if "GET" in (context.methods or ())}


def app_deployments() -> dict[str, dict[str, Any]]:
    return {d["spec"]["template"]["spec"]["containers"][0]["name"]: d
            for d in of_kind("Deployment") if d["metadata"]["name"] != "e2c-redis"}


def http_probes(container: dict[str, Any]) -> dict[str, str]:
    return {kind: container[kind]["httpGet"]["path"]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def test_probes_point_at_routes_the_apps_serve() -> None:
    deployments = app_deployments()
    assert set(deployments) == {*SERVICE_ROLES, "console"}
    for app, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        probes = http_probes(container)
        assert set(probes.values()) <= app_routes(app), app
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]
        if app in SERVICE_ROLES:
            assert probes["readinessProbe"] == "/health/ready"
            assert probes["livenessProbe"] == "/health/live"
        else:
            assert probes["readinessProbe"] == probes["livenessProbe"] == "/health"


def test_every_container_asks_for_resources_and_runs_unprivileged() -> None:
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def secret_refs(container: dict[str, Any]) -> dict[str, str]:
    return {env["name"]: env["valueFrom"]["secretKeyRef"]["name"]
            for env in container["env"] if "secretKeyRef" in env.get("valueFrom", {})}


def test_credentials_come_from_the_secrets_the_operators_make() -> None:
    users = {u["metadata"]["name"] for u in of_kind("KafkaUser")}
    (kafka,) = of_kind("Kafka")
    prefix = kafka["spec"]["entityOperator"]["userOperator"]["secretPrefix"]
    (cluster,) = of_kind("Cluster")
    for app, deployment in app_deployments().items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        refs = secret_refs(container)
        principal = env["E2C_KAFKA_USERNAME"]
        assert principal == (app if app in SERVICE_ROLES else "ops")
        assert principal in users
        assert refs["E2C_KAFKA_PASSWORD"] == f"{prefix}{principal}"
        assert env["E2C_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['metadata']['name']}-kafka-bootstrap:9093"
        if app in SERVICE_ROLES:
            assert refs["E2C_POSTGRES_PASSWORD"] == f"{cluster['metadata']['name']}-app"
            assert env[f"{app.upper()}_DATABASE_URL"].endswith(f"-rw:5432/{app}")
            assert "$(E2C_POSTGRES_PASSWORD)" in env[f"{app.upper()}_DATABASE_URL"]
            assert "$(REDIS_PASSWORD)" in env["REDIS_URL"]
            assert env["E2C_TOKENS_FILE"] == "/run/e2c/tokens/tokens.json"
        for value in env.values():  # a URL's password is a reference to a Secret's
            userinfo = re.match(r"^[a-z+]+://([^@/]*)@", value or "")
            if userinfo:
                assert re.fullmatch(r"[a-z0-9]*:\$\([A-Z0-9_]+\)", userinfo.group(1)), value


def test_services_and_budgets_select_their_deployments() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    for kind in ("Service", "PodDisruptionBudget"):
        for document in of_kind(kind):
            target = deployments[document["metadata"]["name"]]
            labels = target["spec"]["template"]["metadata"]["labels"]
            selector = document["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert selector.items() <= labels.items(), document["metadata"]["name"]
    budgets = {b["metadata"]["name"]: b["spec"] for b in of_kind("PodDisruptionBudget")}
    assert set(budgets) == {f"e2c-{app}" for app in (*SERVICE_ROLES, "console")}
    for app in SERVICE_ROLES:
        assert budgets[f"e2c-{app}"]["minAvailable"] == 1
        assert deployments[f"e2c-{app}"]["spec"]["replicas"] >= 2
