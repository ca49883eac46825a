"""deploy/, Dockerfile and docker-compose.yml agree with each other and with `Metrics`.

Static checks only (no containers); `promtool` must be installed (Debian's `prometheus`
package, which `.ci/run` installs): these tests fail, never skip, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST_YML = DEPLOY / "prometheus" / "rules_test.yml"
DATASOURCE_YAML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDER_YAML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "sentinel.yaml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "furnace-sentinel.json"
COMPOSE_YML = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

DATASOURCE = {"type": "prometheus", "uid": "sentinel-prometheus"}
# Series Prometheus adds itself to every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
)


def exposed_series() -> set[str]:
    """Sample names a `Metrics` object can expose (histograms as `_bucket`/`_sum`/`_count`)."""
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in _SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists of aggregations and vector matching
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        word = match.group()
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES_YML.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_YML.read_text())
    return loaded


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(`apt-get install -y prometheus`; .ci/run does it)",
            pytrace=False,
        )
    return path


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [PROMETHEUS_YML, RULES_YML, RULES_TEST_YML, DATASOURCE_YAML, PROVIDER_YAML, COMPOSE_YML],
    ids=lambda p: p.name,
)
def test_yaml_parses(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_metric_name_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, modality) (rate(furnace_inference_seconds_bucket"
        '{modality=~"$furnace", le!="1e-3"}[$__rate_interval]))) > 1e-3 and on (instance) '
        "up offset 5m or vector(0) unless count(furnace_model_info) by (model_version) > 1"
    )
    assert metric_names(expr) == {"furnace_inference_seconds_bucket", "up", "furnace_model_info"}


# -- Grafana --------------------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    text = DASHBOARD_JSON.read_text()
    board = dashboard()
    assert "${DS_" not in text
    assert "__inputs" not in board and "__requires" not in board
    assert board["id"] is None
    assert board["uid"] == "furnace-sentinel"
    ids = [panel["id"] for panel in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in all_panels(board["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_datasource_is_the_provisioned_one() -> None:
    provisioned = yaml.safe_load(DATASOURCE_YAML.read_text())["datasources"]
    assert [(d["uid"], d["type"]) for d in provisioned] == [("sentinel-prometheus", "prometheus")]
    assert provisioned[0]["url"] == "http://prometheus:9090"
    assert provisioned[0]["editable"] is False

    board = dashboard()
    panels = list(all_panels(board["panels"]))
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]


def test_furnace_variable_lists_a_metric_with_a_furnace_label() -> None:
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "furnace"]
    match = re.fullmatch(r"label_values\((\w+), furnace\)", variable["definition"])
    assert match is not None
    assert variable["query"]["query"] == variable["definition"]
    metrics = Metrics(furnaces=["F01"])
    metrics.set_modality_up(furnace_id="F01", modality="current", up=True)
    body, _ = metrics.render()
    assert re.search(rf'^{match.group(1)}\{{[^}}]*furnace="F01"', body.decode(), re.MULTILINE)


def test_dashboard_and_rules_use_only_registered_metrics() -> None:
    known = exposed_series() | PROMETHEUS_SERIES
    exprs = dashboard_exprs() + [rule["expr"] for rule in rules()]
    assert len(exprs) > 20
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"unknown metric(s) {names - known} in: {expr}"
        used |= names
    # Each series of docs/design/serving.md 4.1 is on the dashboard or in an alert.
    families = {name.removesuffix("_total") for name in used} | {
        re.sub(r"_(bucket|sum|count)$", "", name) for name in used
    }
    for family in Metrics().registry.collect():
        assert family.name in families, f"{family.name} is neither charted nor alerted on"


def test_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    (provider,) = yaml.safe_load(PROVIDER_YAML.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["disableDeletion"] is True
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# -- Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrapes_every_replica_every_5s() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "sentinel"
    assert job["scrape_interval"] == "5s"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    replicas = sorted(s for s in compose()["services"] if s.startswith("sentinel-"))
    assert targets == [f"{name}:8000" for name in replicas]
    assert config["rule_files"] == ["rules.yml"]


def test_promtool_check_config_and_rules() -> None:
    tool = promtool()
    for args in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(RULES_YML)]):
        out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", str(RULES_TEST_YML)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_is_an_alert_with_a_severity_and_summary() -> None:
    for rule in rules():
        assert "alert" in rule, "no recording rules: their names would not be in Metrics"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    # A furnace condition is the service's own alert, not a Prometheus one (rules.yml header).
    assert not any("furnace_alert_active" in rule["expr"] for rule in rules())


# -- docker-compose.yml ---------------------------------------------------------------------


def _mapping_get(node: yaml.MappingNode, key: str) -> yaml.Node:
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node
    raise KeyError(key)


def test_replicas_come_from_one_anchor_and_differ_in_shard_index() -> None:
    root = yaml.compose(COMPOSE_YML.read_text())
    assert isinstance(root, yaml.MappingNode)
    anchor = _mapping_get(root, "x-sentinel")
    services = _mapping_get(root, "services")
    assert isinstance(services, yaml.MappingNode)
    replicas = [k.value for k, _ in services.value if k.value.startswith("sentinel-")]
    assert replicas == ["sentinel-0", "sentinel-1"]
    for name in replicas:
        service = _mapping_get(services, name)
        assert isinstance(service, yaml.MappingNode)
        assert _mapping_get(service, "<<") is anchor, f"{name} is not built from x-sentinel"

    loaded = compose()
    base = dict(loaded["x-sentinel"])
    indexes = []
    for name in replicas:
        service = dict(loaded["services"][name])
        env = service.pop("environment")
        service.pop("ports", None)  # only sentinel-0 publishes the API
        assert service == {k: v for k, v in base.items() if k != "environment"}, name
        assert {k: v for k, v in env.items() if k != "FURNACE_SHARD_INDEX"} == base["environment"]
        assert env["FURNACE_SHARD_COUNT"] == str(len(replicas))
        assert env["FURNACE_REDIS_URL"] == "redis://redis:6379/0"
        indexes.append(env["FURNACE_SHARD_INDEX"])
    assert sorted(indexes) == [str(i) for i in range(len(replicas))]


def test_replica_block_is_ready_for_draining_and_restarts() -> None:
    base = compose()["x-sentinel"]
    assert base["stop_grace_period"] == "30s"
    assert base["restart"] == "unless-stopped"
    assert base["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert "/readyz" in " ".join(base["healthcheck"]["test"])
    assert any(k.startswith("FURNACE_API_KEYS") for k in base["environment"])
    assert base["build"]["context"] == "."


def test_only_the_api_of_sentinel_0_and_grafana_are_published() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"sentinel-0": ["8000:8000"], "grafana": ["3000:3000"]}


def test_redis_keeps_streams() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["image"].startswith("redis:7")
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_feed_and_monitoring_services() -> None:
    services = compose()["services"]
    assert services["feed"]["command"][:2] == ["furnace", "replay"]
    assert services["feed"]["image"] == services["sentinel-0"]["image"]
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for secret in compose()["secrets"].values():
        assert (ROOT / (secret["file"] + ".example")).is_file(), secret["file"]


# -- Dockerfile -----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_dockerfile_installs_the_serve_extra_only() -> None:
    rows = _instructions()
    assert rows[0] == ("FROM", "python:3.11-slim")
    installs = [
        command
        for word, rest in rows
        if word == "RUN"
        for command in re.split(r"&&|;", rest)
        if "pip install" in command
    ]
    assert any("'.[serve]'" in rest or '".[serve]"' in rest for rest in installs)
    for rest in installs:
        assert "torch" not in rest.lower()
        assert "[train" not in rest and "[dev" not in rest
    copied = {rest.split()[0].rstrip("/") for word, rest in rows if word == "COPY"}
    assert {"service", "simulator", "furnace", "models"} <= copied
    assert not {"model", "training", "tests"} & copied
    # The build fails if anything pulled torch in anyway.
    assert any("find_spec('torch') is not None" in rest for word, rest in rows if word == "RUN")


def test_dockerfile_runs_the_service_as_a_non_root_user() -> None:
    rows = _instructions()
    users = [rest for word, rest in rows if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert ("EXPOSE", "8000") in rows
    (health,) = [rest for word, rest in rows if word == "HEALTHCHECK"]
    assert "/readyz" in health and "urllib" in health and "curl" not in health
    (cmd,) = [json.loads(rest) for word, rest in rows if word == "CMD"]
    assert cmd[:2] == ["furnace", "serve"]
