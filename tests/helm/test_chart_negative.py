"""Mistakes are caught, each with a message that says what is wrong: bad values by the
chart's schema or its own checks (helm refuses to render), broken templates by the
manifest validation (strict Kubernetes schemas, CRD schemas, the null check)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stderr_of_failed_render(render: Any, *args: str) -> str:
    with pytest.raises(AssertionError) as caught:
        render(*args)
    stderr: str = getattr(caught.value, "stderr", "")
    assert stderr, f"render failed without a helm message: {caught.value}"
    return stderr


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "triton.replicas=two"], "at '/triton/replicas': got string, want integer"),
    (["--set", "gateway.port=http"], "at '/gateway/port': got string, want integer"),
    (["--set", "gateway.settings.batch_rows=many"],
     "at '/gateway/settings/batch_rows': got string, want integer"),
    (["--set", "gateway.tritonSharedMemory=1"],
     "at '/gateway/tritonSharedMemory': got number, want boolean"),
    (["--set-json", 'models.load="feed_ranker"'], "at '/models/load': got string, want array"),
])
def test_wrong_type_in_values(render: Any, values: list[str], message: str) -> None:
    assert message in _stderr_of_failed_render(render, *values)


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "topology=mesh"], "at '/topology': value must be one of 'sidecar', 'separate'"),
    (["--set", "modelRepository.source=nfs"],
     "at '/modelRepository/source': value must be one of 'objectStore', 'pvc', 'image'"),
    (["--set", "gateway.settings.failover=retry"],
     "at '/gateway/settings/failover': value must be one of 'embedded', 'none'"),
])
def test_unknown_enum_value(render: Any, values: list[str], message: str) -> None:
    assert message in _stderr_of_failed_render(render, *values)


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "gatway.port=8080"], "additional properties 'gatway' not allowed"),
    # Keys the chart derives from the topology cannot be overridden behind its back.
    (["--set", "gateway.settings.triton_url=elsewhere:8001"],
     "additional properties 'triton_url' not allowed"),
])
def test_unknown_values_key(render: Any, values: list[str], message: str) -> None:
    assert message in _stderr_of_failed_render(render, *values)


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "modelRepository.source=pvc"],
     "modelRepository.pvc.claimName is required when modelRepository.source is pvc"),
    (["--set", "models.default=other_model"],
     'models.default "other_model" must be one of models.load [feed_ranker]'),
    (["--set", "gateway.port=8001"],
     "gateway.port 8001 collides with a Triton port in the same pod (topology sidecar)"),
    (["--set", "gateway.auth.enabled=true"],
     "gateway.auth.enabled needs gateway.auth.existingSecret or gateway.auth.token"),
    (["--set", "gateway.preStopSleepSeconds=20"],
     "triton.preStopSleepSeconds must exceed gateway.preStopSleepSeconds (topology sidecar)"),
])
def test_inconsistent_values_fail_with_the_reason(render: Any, values: list[str],
                                                  message: str) -> None:
    assert message in _stderr_of_failed_render(render, *values)


def _break(helm: Any, tmp_path: Path, template: str, old: str, new: str) -> Path:
    """A copy of the chart with one template edited (``old`` must occur exactly once)."""
    chart = helm.chart_copy(tmp_path)
    path = chart / "templates" / template
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {template}"
    path.write_text(text.replace(old, new))
    return Path(chart)


def test_misspelled_template_field(helm: Any, render: Any, problems: Any,
                                   tmp_path: Path) -> None:
    chart = _break(helm, tmp_path, "triton-deployment.yaml", "      containers:",
                   "      contianers:")
    found = problems(render(chart=chart).docs)
    assert any(re.search(r"Deployment/rel-rankserve-triton: spec\.template\.spec: "
                         r".*'contianers' was unexpected", p) for p in found), found
    # helm itself renders and lints it happily: only the schema validation sees it.
    assert helm.run("lint", "--strict", str(chart)).returncode == 0


def test_misspelled_field_in_a_helper(helm: Any, render: Any, problems: Any,
                                      tmp_path: Path) -> None:
    probe = "  readinessProbe:\n    {}:\n      path: /readyz"
    chart = _break(helm, tmp_path, "_helpers.tpl", probe.format("httpGet"),
                   probe.format("httpget"))
    found = problems(render(chart=chart).docs)
    assert any("'httpget' was unexpected" in p for p in found), found


def test_null_value_is_a_failure(helm: Any, render: Any, problems: Any,
                                 tmp_path: Path) -> None:
    # A key whose value comes from an unset value renders as `key:` (null) in YAML.
    chart = _break(helm, tmp_path, "serviceaccount.yaml", "automountServiceAccountToken: false",
                   "automountServiceAccountToken: {{ .Values.serviceAccount.automount }}")
    found = problems(render(chart=chart).docs)
    assert "ServiceAccount/rel-rankserve: null at automountServiceAccountToken" in found


def test_unknown_kind_is_a_failure(helm: Any, render: Any, problems: Any,
                                   tmp_path: Path) -> None:
    chart = helm.chart_copy(tmp_path)
    (chart / "templates" / "certificate.yaml").write_text(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: x\n"
        "spec:\n  secretName: x\n")
    found = problems(render(chart=chart).docs)
    assert any(p.startswith("Certificate/x: no schema and not an allow-listed CRD")
               for p in found), found


def test_service_monitor_checked_against_its_crd_schema(helm: Any, render: Any,
                                                        problems: Any, tmp_path: Path) -> None:
    chart = _break(helm, tmp_path, "servicemonitor.yaml", "    - port: http\n      path: /metrics",
                   "    - port: http\n      pathh: /metrics")
    found = problems(render("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                            chart=chart).docs)
    assert any(p.startswith("ServiceMonitor/rel-rankserve: spec.endpoints.0: ")
               and "'pathh' was unexpected" in p for p in found), found
    chart = _break(helm, tmp_path / "b", "servicemonitor.yaml",
                   "interval: {{ $sm.interval }}\n      scrapeTimeout: {{ $sm.scrapeTimeout }}\n"
                   "    - port: triton-metrics",
                   "interval: 15 seconds\n      scrapeTimeout: {{ $sm.scrapeTimeout }}\n"
                   "    - port: triton-metrics")
    found = problems(render("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                            chart=chart).docs)
    assert any("spec.endpoints.0.interval: '15 seconds' does not match" in p
               for p in found), found
