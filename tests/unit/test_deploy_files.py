"""What the deploy files mean, beyond their syntax (which deploy/check validates with
each format's own tool): every ZNS_GATE_* setting they give is one the service reads
and accepts, and the ports, paths, labels and exit statuses they name are the ones the
service and the other files use."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.cli import EXIT_IN_USE, EXIT_INVALID_SETTINGS
from service.config import CONFIG_ENV, ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"


def names_a_setting(variable: str) -> bool:
    """Whether ZNS_GATE_A__B names the setting a.b (a variable naming none is ignored by
    the settings, so a misspelt one would go unnoticed)."""
    if variable == CONFIG_ENV:
        return True
    model: Any = Settings
    for part in variable.removeprefix(ENV_PREFIX).lower().split("__"):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        model = fields[part].annotation
    return True


def effective(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """The settings a process with exactly these ZNS_GATE_* variables would run with."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            assert names_a_setting(name), f"{name} is no setting"
            monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize(
    ("variable", "known"),
    [
        ("ZNS_GATE_LOG__PATH", True),
        ("ZNS_GATE_API__ADVERTISED_URL", True),
        ("ZNS_GATE_APPS", True),
        ("ZNS_GATE_LOG_PATH", False),
        ("ZNS_GATE_SERVER__HOSTNAME", False),
    ],
)
def test_a_misspelt_variable_is_noticed(variable: str, known: bool) -> None:
    assert names_a_setting(variable) is known


def gate_routes() -> set[str]:
    from service.app import build_app

    app = build_app(Settings())
    return {resource.canonical for resource in app.router.resources()}


# -- the image -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DEPLOY / "docker" / "Dockerfile"))


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    instructions: list[dict[str, Any]] = parser.structure
    last_from = max(i for i, step in enumerate(instructions) if step["instruction"] == "FROM")
    return instructions[last_from:]


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [step["value"] for step in stage if step["instruction"] == instruction]


def test_the_image_is_python_311_slim_at_every_stage(dockerfile: DockerfileParser) -> None:
    bases = [v.split()[0] for v in values(dockerfile.structure, "FROM")]
    assert bases
    assert set(bases) == {"python:3.11-slim"}


def test_the_image_runs_serve_as_its_own_non_root_user(dockerfile: DockerfileParser) -> None:
    stage = final_stage(dockerfile)
    (user,) = values(stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert any(f"--uid {uid}" in run for run in values(stage, "RUN"))
    assert values(stage, "ENTRYPOINT") == ['["zns-gate"]']
    assert values(stage, "CMD") == ['["serve"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert scripts["project"]["scripts"]["zns-gate"] == "service.cli:main"


def test_the_image_settings_are_valid_and_keep_state_in_its_volume(
    dockerfile: DockerfileParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = effective(monkeypatch, dockerfile.envs)
    assert settings.server.host == "0.0.0.0"  # from the environment, on every interface
    (volume,) = values(final_stage(dockerfile), "VOLUME")
    state = Path(yaml.safe_load(volume)[0])
    assert settings.log.path.is_relative_to(state)
    assert settings.processor.state_dir.is_relative_to(state)
    (exposed,) = values(final_stage(dockerfile), "EXPOSE")
    assert int(exposed) == settings.server.port


def test_the_build_context_holds_what_the_image_copies(dockerfile: DockerfileParser) -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    kept = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    copied = {
        source
        for step in values(dockerfile.structure, "COPY")
        if not step.startswith("--from")
        for source in step.split()[:-1]
    }
    assert copied == kept
    assert all((ROOT / source).exists() for source in copied)


# -- compose ----------------------------------------------------------------------------


def compose(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE / name).read_text(encoding="utf-8"))
    return document


def resolved(value: str, given: dict[str, str]) -> str:
    """`${NAME:-default}` as compose resolves it with `given` as the environment."""
    return re.sub(
        r"\$\{(\w+):-([^}]*)\}", lambda m: given.get(m.group(1)) or m.group(2), str(value)
    )


def dotenv_example() -> dict[str, str]:
    found = {}
    for line in (COMPOSE / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = shlex.split(value)[0]
    return found


def gate_environment(document: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """The gate's ZNS_GATE_* variables, with its settings file's path on this machine."""
    service = document["services"]["zns-gate"]
    env = {name: resolved(value, given) for name, value in service["environment"].items()}
    mounted = {c["target"]: document["configs"][c["source"]]["file"] for c in service["configs"]}
    env[CONFIG_ENV] = str(COMPOSE / mounted[env[CONFIG_ENV]])
    return env


def image_env() -> dict[str, str]:
    envs: dict[str, str] = DockerfileParser(str(DEPLOY / "docker" / "Dockerfile")).envs
    return envs


@pytest.mark.parametrize("given", ["defaults", ".env.example"])
@pytest.mark.parametrize("name", ["compose.yaml", "compose.embedded.yaml"])
def test_compose_settings_are_valid(
    name: str, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = compose(name)
    shell = {} if given == "defaults" else dotenv_example()
    env = {**image_env(), **gate_environment(document, shell)}
    settings = effective(monkeypatch, env)
    if given == ".env.example":
        assert settings.apps
        assert settings.api.tokens
    service = document["services"]["zns-gate"]
    published = {int(port.split(":")[-1]) for port in service["ports"]}
    assert published == {settings.server.port}
    # The image's state directory is a volume, so the SQLite file outlives the container.
    mounts = {volume.split(":")[1] for volume in service["volumes"]}
    assert any(settings.log.path.is_relative_to(mount) for mount in mounts)
    assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (COMPOSE / service["build"]["context"]).resolve() == ROOT


def test_compose_runs_the_gate_on_its_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    document = compose("compose.yaml")
    settings = effective(monkeypatch, {**image_env(), **gate_environment(document, {})})
    assert settings.log.backend == "kafka"
    kafka = document["services"]["kafka"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{settings.log.bootstrap_servers}" in advertised.split(",")
    assert "kafka" in document["services"]["zns-gate"]["depends_on"]
    # The same Kafka version the tests run against (deploy/kafka).
    pom = (DEPLOY / "kafka" / "pom.xml").read_text(encoding="utf-8")
    tested = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert tested is not None
    assert kafka["image"] == f"apache/kafka:{tested.group(1)}"
    # The address other instances would forward to is the gate's own name and port.
    assert settings.api.advertised_url == f"http://zns-gate:{settings.server.port}"
    assert {"prometheus", "grafana"} <= set(document["services"])


def test_compose_embedded_has_no_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    document = compose("compose.embedded.yaml")
    assert set(document["services"]) == {"zns-gate"}
    settings = effective(monkeypatch, {**image_env(), **gate_environment(document, {})})
    assert settings.log.backend == "embedded"


def test_prometheus_scrapes_the_gates_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    document = compose("compose.yaml")
    settings = effective(monkeypatch, {**image_env(), **gate_environment(document, {})})
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] in gate_routes()
    (targets,) = job["static_configs"]
    assert targets["targets"] == [f"zns-gate:{settings.server.port}"]
    mounted = {c["source"]: c["target"] for c in document["services"]["prometheus"]["configs"]}
    assert document["configs"]["prometheus-settings"]["file"] == "./prometheus.yml"
    assert f"--config.file={mounted['prometheus-settings']}" in (
        document["services"]["prometheus"]["command"]
    )
    sources = yaml.safe_load((COMPOSE / "grafana" / "datasources.yaml").read_text("utf-8"))
    prometheus_port = document["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert sources["datasources"][0]["url"] == f"http://prometheus:{prometheus_port}"


def exposed_metrics() -> set[str]:
    """Every sample name the service's /metrics can show."""
    from service.metrics import REGISTRY

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        metric.name + suffix for metric in REGISTRY.collect() for suffix in suffixes[metric.type]
    }


def test_the_dashboard_shows_metrics_the_service_has() -> None:
    document = compose("compose.yaml")
    mounted = {c["source"]: c["target"] for c in document["services"]["grafana"]["configs"]}
    provider = yaml.safe_load((COMPOSE / "grafana" / "dashboards.yaml").read_text("utf-8"))
    folder = provider["providers"][0]["options"]["path"]
    assert Path(mounted["grafana-dashboard-zns-gate"]).parent == Path(folder)
    board_file = document["configs"]["grafana-dashboard-zns-gate"]["file"]
    board = orjson.loads((COMPOSE / board_file).read_bytes())
    sources = yaml.safe_load((COMPOSE / "grafana" / "datasources.yaml").read_text("utf-8"))
    source_uid = sources["datasources"][0]["uid"]
    exposed = exposed_metrics()
    assert board["panels"]
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source_uid
            named = set(re.findall(r"zns_gate_[a-z_]+", target["expr"]))
            assert named, panel["title"]
            assert named <= exposed, panel["title"]


# -- Kubernetes -------------------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / name).read_text(encoding="utf-8"))
    return document


def pod_environment(tmp_path: Path, pod_ip: str) -> dict[str, str]:
    """The gate container's variables as the kubelet sets them for a pod at `pod_ip`,
    with the ConfigMap's file written where ZNS_GATE_CONFIG would find it."""
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            env[item["name"]] = pod_ip
        else:
            # $(NAME) refers to a variable defined before it, as the kubelet expands it.
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    (secret_ref,) = container["envFrom"]
    secret = manifest("example/secret.yaml")
    assert secret_ref["secretRef"]["name"] == secret["metadata"]["name"]
    env.update(secret["stringData"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    config_map = manifest("configmap.yaml")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    config_path = Path(env[CONFIG_ENV])
    assert config_path.parent == Path(mounts[config_volume["name"]])
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name], encoding="utf-8")
    env[CONFIG_ENV] = str(local)
    return env


def test_the_pods_settings_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**image_env(), **pod_environment(tmp_path, "10.42.3.17")}
    settings = effective(monkeypatch, env)
    assert settings.log.backend == "kafka"
    assert settings.server.host == "0.0.0.0"
    assert settings.api.advertised_url == f"http://10.42.3.17:{settings.server.port}"
    assert settings.api.cluster_secret is not None  # several pods forward to each other
    assert settings.apps
    assert settings.api.tokens
    (container,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [settings.server.port]


def test_the_pods_are_found_by_their_service_budget_and_monitor() -> None:
    deployment = manifest("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}

    service = manifest("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in port_names

    budget = manifest("poddisruptionbudget.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # One pod may go at a time, and never all of them.
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]

    # A CRD that kubernetes-validate has no schema for: checked here instead.
    monitor = manifest("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    watched = monitor["spec"]["selector"]["matchLabels"]
    assert watched.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] in gate_routes()


def test_the_pods_probes_and_stop_fit_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    routes = gate_routes()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    settings = effective(monkeypatch, {**image_env(), **pod_environment(tmp_path, "10.0.0.1")})
    assert pod["terminationGracePeriodSeconds"] > settings.server.shutdown_timeout_s
    # The image's user, so that runAsNonRoot holds and the state volume is writable.
    user = DockerfileParser(str(DEPLOY / "docker" / "Dockerfile")).structure
    (image_user,) = [s["value"] for s in user if s["instruction"] == "USER"]
    assert pod["securityContext"]["runAsUser"] == int(image_user.split(":")[0])
    state = next(m for m in container["volumeMounts"] if m["name"] == "state")
    assert settings.processor.state_dir.is_relative_to(state["mountPath"])


# -- systemd ----------------------------------------------------------------------------


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of deploy/systemd/zns-gate.service, repeated keys kept."""
    entries = []
    section = ""
    text = (DEPLOY / "systemd" / "zns-gate.service").read_text(encoding="utf-8")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


def unit_values(key: str) -> list[str]:
    return [value for section, k, value in unit_entries() if k == key and section == "Service"]


def test_the_units_settings_are_valid_and_keep_the_database_in_its_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, etc = tmp_path / "var-lib", tmp_path / "etc"
    (etc / "zns-gate").mkdir(parents=True)
    (etc / "zns-gate" / "zns-gate.toml").write_text("", encoding="utf-8")
    env = {}
    for assignment in unit_values("Environment"):
        name, _, value = assignment.partition("=")
        env[name] = value.replace("%S", str(state)).replace("%E", str(etc))
    settings = effective(monkeypatch, env)
    assert settings.log.backend == "embedded"
    (directory,) = unit_values("StateDirectory")
    assert settings.log.path.parent == state / directory
    assert Path(env[CONFIG_ENV]).parent == etc / unit_values("ConfigurationDirectory")[0]


def test_the_unit_restarts_only_where_a_restart_can_help() -> None:
    assert unit_values("Restart") == ["on-failure"]
    (prevented,) = unit_values("RestartPreventExitStatus")
    assert {int(status) for status in prevented.split()} == {EXIT_INVALID_SETTINGS, EXIT_IN_USE}
    assert unit_values("DynamicUser") == ["yes"]
    (start,) = unit_values("ExecStart")
    assert start.split()[1:] == ["serve"]
    (check,) = unit_values("ExecStartPre")
    assert check.split() == [start.split()[0], "config", "check"]
    stop = unit_values("TimeoutStopSec")[0]
    assert float(stop.removesuffix("s")) > Settings().server.shutdown_timeout_s


# -- Prometheus alert rules (promtool checks and tests them in deploy/check) -------------

PROMETHEUS = DEPLOY / "prometheus"


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "rules.yml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alerts_watch_metrics_the_service_has_and_say_what_to_do() -> None:
    exposed = exposed_metrics()
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "ZnsGatePenaltyNear",
        "ZnsGateTierDownLikely",
        "ZnsGateTokenExpiring",
        "ZnsGateConsumerLagHigh",
        "ZnsGateDeadLetters",
        "ZnsGateProcessorStopped",
    }
    for rule in rules:
        named = set(re.findall(r"zns_gate_[a-z_]+", rule["expr"]))
        assert named, rule["alert"]
        assert named <= exposed, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["rules.yml"]
    fired: dict[str, set[bool]] = {}
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            fired.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    for rule in alert_rules():
        assert fired.get(rule["alert"]) == {True, False}, rule["alert"]


def test_the_operations_doc_explains_each_alert_and_per_oa_metric() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in doc, rule["alert"]
    for name in exposed_metrics():
        if name.startswith("zns_gate_oa_"):
            assert f"`{name}" in doc, name


def test_the_dashboard_has_per_oa_panels_over_its_oa_variable() -> None:
    board = orjson.loads((COMPOSE / "grafana" / "dashboards" / "zns-gate.json").read_bytes())
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "oa_id"]
    assert "zns_gate_oa_" in variable["definition"]
    per_oa = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        if '$oa_id' in target["expr"]
        for name in re.findall(r"zns_gate_oa_[a-z_]+", target["expr"])
    }
    assert per_oa == {name for name in exposed_metrics() if name.startswith("zns_gate_oa_")}
