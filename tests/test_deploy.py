"""Deployment files validate, and every metric they query is one the services export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream_ae.operation.metrics import WorkerMetrics
from trainer.service import TrainerMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _exported_names() -> set[str]:
    names: set[str] = {"up"}
    for registry in (WorkerMetrics().registry, TrainerMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            if family.type == "counter":  # labelled counters have no samples before first use
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b(stream_ae_[a-z_]+|up)\b(?=\s*[\[{(\s)*/<>=]|$)", expr))


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    exported = _exported_names()
    dashboard = json.loads((DEPLOY / "grafana/dashboards/stream-ae.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(dashboard["panels"]) >= 8 and all(p["targets"] for p in dashboard["panels"])
    unknown = {name for e in exprs for name in _queried(e)} - exported
    assert not unknown, f"queried but never exported: {sorted(unknown)}"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return tool


def test_alert_rules_check_and_unit_tests_pass() -> None:
    tool = _promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        proc = subprocess.run([tool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"kafka", "worker", "trainer", "producer", "prometheus", "grafana"} <= set(compose["services"])
    for mount in compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]:
        assert (ROOT / mount.split(":")[0]).exists(), mount


def test_kubernetes_manifests_validate_strictly() -> None:
    core = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "servicemonitor.yaml")
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *map(str, core)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(core)
    monitor = yaml.safe_load((DEPLOY / "k8s/servicemonitor.yaml").read_text())  # a CRD: no bundled schema
    service = yaml.safe_load((DEPLOY / "k8s/service.yaml").read_text())
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
