"""The chart's alert rules and dashboard use only metrics and labels the gateway exports,
the rules render as a valid PrometheusRule where the cluster has the CRD, and the latency
alert's threshold is the configured budget."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from serving.telemetry.metrics import Metrics

CHART = Path(__file__).resolve().parents[2] / "helm" / "rankserve"
RULE_API = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]
ALERTS = {"RankserveFailover", "RankserveDegradedAnswers", "RankserveCircuitBreakerOpen",
          "RankserveLatencyOverBudget", "RankserveShedding"}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint",
                 "le"}
PROCESS = {"process_cpu_seconds_total": set(), "process_resident_memory_bytes": set(),
           "process_open_fds": set()}
# GPU gauges exist only where NVML finds a GPU, so they cannot be read off a registry here.
GPU = {"rankserve_gpu_utilization_ratio": {"gpu"}, "rankserve_gpu_memory_used_bytes": {"gpu"},
       "rankserve_gpu_power_watts": {"gpu"}, "rankserve_gpu_temperature_celsius": {"gpu"}}
SELECTOR = re.compile(r"\b((?:rankserve|process)_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"by \(([^)]*)\) \((?:rate|increase)?\(?((?:rankserve|process)_[a-z_]+)")
MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")


def exported() -> dict[str, set[str]]:
    """Every series name the gateway's registry can export, with its label names."""
    out = {**PROCESS, **GPU}
    for value in vars(Metrics()).values():
        if isinstance(value, MetricWrapperBase):
            name, labels = value._name, set(value._labelnames)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                        "gauge": [""]}[value._type]
            for suffix in suffixes:
                out[name + suffix] = labels
    return out


def unknown_uses(expr: str, known: dict[str, set[str]]) -> list[str]:
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        if name not in known:
            problems.append(f"no metric {name}")
            continue
        for label in MATCHER.findall(matchers):
            if label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    for grouping, name in GROUPING.findall(expr):
        for label in (part.strip() for part in grouping.split(",")):
            if name in known and label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label} to group by")
    return problems


def rules(rendered: Any) -> dict[str, dict[str, Any]]:
    rule = rendered.one("PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_alert_rules_render_valid_and_use_real_metrics(render: Any,
                                                       problems: Any) -> None:
    rendered = render(*RULE_API)
    assert problems(rendered.by_kind["PrometheusRule"]) == []
    found = rules(rendered)
    assert set(found) == ALERTS
    known = exported()
    for name, rule in found.items():
        assert unknown_uses(rule["expr"], known) == [], name
        assert 'namespace="ranking"' in rule["expr"], name


def test_latency_alert_threshold_is_the_configured_budget(render: Any) -> None:
    default = rules(render(*RULE_API))["RankserveLatencyOverBudget"]["expr"]
    assert default.rstrip().endswith("> 0.05")
    slower = rules(render(*RULE_API, "--set", "gateway.settings.default_budget_ms=80"))
    assert slower["RankserveLatencyOverBudget"]["expr"].rstrip().endswith("> 0.08")
    assert 'status_class="2xx"' in default  # fast refusals cannot pull the p99 down


@pytest.mark.parametrize("args", [[], [*RULE_API, "--set", "alerts.enabled=false"]])
def test_no_rules_without_the_crd_or_when_disabled(render: Any, args: list[str]) -> None:
    assert "PrometheusRule" not in render(*args).kinds()


def test_dashboard_uses_only_exported_metrics_and_labels() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    known = exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    ours = [e for e in exprs if "rankserve_" in e or "process_" in e]
    assert ours
    assert [p for e in ours for p in unknown_uses(e, known)] == []
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Failover and degraded answers", "Circuit breaker state",
            "Gateway process", "Latency by model version (2xx answers)"} <= titles
    latency = next(p for p in dashboard["panels"] if p["title"].startswith("Request latency"))
    assert all('status_class="2xx"' in t["expr"] for t in latency["targets"][:2])


def test_the_checker_catches_a_wrong_label() -> None:
    known = exported()
    assert unknown_uses('rate(rankserve_failover_batches_total{backend="x"}[1m])', known)
    assert unknown_uses("sum by (status) (rate(rankserve_degraded_answers_total[1m]))", known)
    assert unknown_uses("rankserve_no_such_metric{pod=\"a\"}", known)
