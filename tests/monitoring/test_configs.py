"""deploy/monitoring: Prometheus configs and alert rules accepted (and unit-tested) by promtool,
scrape targets on the services' default ports, dashboards generated and using real metrics,
the compose monitoring profile's mounts present."""

from __future__ import annotations

import importlib.resources
import json
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from marketbus.runtime.consumer_lag import BusExporterSettings
from marketbus.runtime.settings import env_names, load_settings

from .conftest import MONITORING, ROOT

SERVICES = {
    "history_writer": "services.history_writer.settings:HistoryWriterSettings",
    "ingest_finx": "services.ingest_finx.settings:FinxIngestSettings",
    "ingest_ticksupply": "services.ingest_ticksupply.settings:TickSupplySettings",
    "ingest_digitex": "services.ingest_digitex.settings:DigitexIngestSettings",
    "ingest_sitagri": "services.ingest_sitagri.settings:SitagriIngestSettings",
    "order_router": "services.order_router.settings:OrderRouterSettings",
    "export_orchestrator": "services.export_orchestrator.settings:ExportSettings",
    "replay": "services.replay.settings:ReplaySettings",
}


def _promtool(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_accepts_the_rules_and_both_configs(promtool: str) -> None:
    assert "SUCCESS: 13 rules found" in _promtool(promtool, "check", "rules", "alerts.yml")
    for config in ("prometheus.yml", "prometheus-compose.yml"):
        assert "is valid prometheus config file" in _promtool(promtool, "check", "config", config)


def test_alert_rules_fire_on_what_they_watch(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "test", "rules", "alerts_test.yml")


def _default_port(service: str) -> int:
    module, cls = SERVICES[service].split(":")
    settings_cls = getattr(__import__(module, fromlist=[cls]), cls)
    return load_settings(settings_cls, env={}).http_port


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_every_service_is_scraped_on_its_default_port(config: str) -> None:
    doc = yaml.safe_load((MONITORING / config).read_text())
    targets = {t["labels"]["service"]: t["targets"][0]
               for job in doc["scrape_configs"] for t in job["static_configs"]}
    expected = {name: _default_port(name) for name in SERVICES}
    expected["bus_exporter"] = load_settings(BusExporterSettings, env={}).http_port
    assert {name: int(target.rsplit(":", 1)[1]) for name, target in targets.items()} == expected
    assert len(set(expected.values())) == len(expected)  # no two services share a port


def test_dashboards_are_generated_and_up_to_date() -> None:
    result = subprocess.run([sys.executable, "tools/grafana_dashboards.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    titles = {json.loads(p.read_text())["title"] for p in (MONITORING / "grafana" / "dashboards").glob("*.json")}
    assert titles == {"marketbus / feeds", "marketbus / history writer", "marketbus / exports",
                      "marketbus / order router", "marketbus / bus"}


def _metric_names_in_code() -> set[str]:
    names: set[str] = set()
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        names.update(re.findall(r'"(marketbus_[a-z_]+)"', path.read_text()))
    return names


def test_alerts_and_dashboards_only_use_metrics_the_code_exports() -> None:
    used = set(re.findall(r"marketbus_[a-z_]+", (MONITORING / "alerts.yml").read_text()))
    for path in (MONITORING / "grafana" / "dashboards").glob("*.json"):
        for p in json.loads(path.read_text())["panels"]:
            for target in p["targets"]:
                used.update(re.findall(r"marketbus_[a-z_]+", target["expr"]))
    exported = _metric_names_in_code()
    missing = {name for name in used if re.sub(r"_(total|bucket|count|sum)$", "", name) not in exported}
    assert not missing, f"not exported by any service or marketbus module: {sorted(missing)}"


def _dashboard_metrics() -> set[str]:
    used: set[str] = set()
    for path in (MONITORING / "grafana" / "dashboards").glob("*.json"):
        for p in json.loads(path.read_text())["panels"]:
            for target in p["targets"]:
                used.update(
                    re.sub(r"_(total|bucket|count|sum)$", "", n)
                    for n in re.findall(r"marketbus_[a-z_]+", target["expr"])
                )
    return used


def test_every_book_metric_is_on_a_dashboard() -> None:
    """The books' producer and consumer metrics (snapshots, deltas, resyncs, sequence, sync, the
    builders' gaps and outcomes) each have a panel."""
    book = set(re.findall(r'"(marketbus_book_[a-z_]+)"', (ROOT / "shared/marketbus/books/metrics.py").read_text()))
    assert len(book) == 9 and {"marketbus_book_deltas", "marketbus_book_builder_gaps"} <= book
    assert book - _dashboard_metrics() == set()


def test_compose_monitoring_profile_is_valid_and_mounts_existing_files() -> None:
    compose_file = ROOT / "deploy" / "compose" / "monitoring.yml"
    doc = yaml.safe_load(compose_file.read_text())
    spec = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    jsonschema.validate(doc, json.loads(spec.read_text()))
    assert set(doc["services"]) == {"prometheus", "grafana", "bus_exporter"}
    for name, service in doc["services"].items():
        assert service["profiles"] == ["monitoring"], name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # relative to the included file
                assert (compose_file.parent / source).resolve().exists(), f"{name}: {source}"
    exporter_env = doc["services"]["bus_exporter"]["environment"]
    assert set(exporter_env) - {"NATS_URL"} <= set(env_names(BusExporterSettings).values())
    mounted = (compose_file.parent / "../monitoring/prometheus-compose.yml").resolve()
    assert yaml.safe_load(mounted.read_text())["rule_files"] == ["alerts.yml"]
