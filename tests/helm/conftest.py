"""Render the chart with the real helm binary and validate what it renders.

The helm binary is the one ``make`` installs at ``.tools/helm`` (override with
``RANKSERVE_HELM``); without it the chart tests fail with the command that installs it,
rather than skip, because a skipped chart test would let a broken chart through.
Helm runs with private cache/config/data folders, so the user's repositories and plugins
never leak into a test. Validation is offline: Kubernetes objects against the schemas
bundled in ``kubernetes-validate`` (strict: unknown fields are errors), allow-listed CRDs
against their own schema in ``tests/helm/schemas/``, and no ``null`` anywhere.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "rankserve"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBE_VERSION = "1.30.0"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
# CRDs the chart may render, each checked against its own schema instead of Kubernetes'.
CRD_SCHEMAS: dict[tuple[str, str], Path] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule-v1.json",
}

Manifest = dict[str, Any]


class RenderError(AssertionError):
    """helm refused to render; ``stderr`` holds its message."""

    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


def helm_binary() -> Path:
    override = os.environ.get("RANKSERVE_HELM")
    path = Path(override) if override else ROOT / ".tools" / "helm"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"no helm binary at {path}: run `make .tools/helm` (or set RANKSERVE_HELM "
                    "to a helm 4 binary)", pytrace=False)
    return path


@dataclass
class Helm:
    """The real helm, run hermetically against a chart directory."""

    binary: Path
    home: Path
    chart: Path = CHART

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ,
               "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data"),
               # No cluster, ever: `install --dry-run=client` must not find a kubeconfig.
               "KUBECONFIG": str(self.home / "no-kubeconfig")}
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    def template(self, *args: str, chart: Path | None = None) -> list[Manifest]:
        """Render with ``--kube-version`` pinned; return the non-empty documents.

        Raises:
            RenderError: helm exited non-zero (schema rejection, ``fail``, bad YAML).
        """
        argv = ["template", "rel", str(chart or self.chart), "--namespace", "ranking",
                "--kube-version", KUBE_VERSION, *args]
        result = self.run(*argv)
        if result.returncode != 0:
            raise RenderError(argv, result.stderr)
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def chart_copy(self, tmp: Path) -> Path:
        """A private copy of the chart that a test may break on purpose."""
        copy = tmp / "rankserve"
        shutil.copytree(self.chart, copy)
        return copy


def find_nulls(node: Any, path: str = "") -> Iterator[str]:
    """Paths of every null in a manifest (an unset value that helm rendered as empty)."""
    if node is None:
        yield path or "<document>"
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from find_nulls(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from find_nulls(value, f"{path}[{i}]")


def _crd_validator(schema_path: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))


def manifest_problems(doc: Manifest) -> list[str]:
    """Everything wrong with one rendered manifest, each naming the object; [] if valid."""
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    problems = [f"{name}: null at {p}" for p in find_nulls(doc)]
    crd = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        for err in _crd_validator(crd).iter_errors(doc):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            problems.append(f"{name}: {where}: {err.message}")
        return problems
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        # The library reports only its best-matching error ("containers is required");
        # list them all so that the misspelled field ("contianers") is named as well.
        for err in _k8s_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            problems.append(f"{name}: {where}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        problems.append(f"{name}: no schema and not an allow-listed CRD ({err.message})")
    return problems


@functools.cache
def _k8s_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """The strict schema kubernetes-validate uses for this kind, as a reusable validator."""
    folder = f"kubernetes-json-schema/v{KUBE_VERSION}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    schema = schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", KUBE_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", KUBE_VERSION)
    registry: Registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def all_problems(docs: list[Manifest]) -> list[str]:
    return [p for doc in docs for p in manifest_problems(doc)]


@dataclass
class Rendered:
    """One rendered release, indexed for the cross-object checks."""

    docs: list[Manifest]
    by_kind: dict[str, list[Manifest]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.docs:
            self.by_kind.setdefault(doc["kind"], []).append(doc)

    def kinds(self) -> set[str]:
        return set(self.by_kind)

    def one(self, kind: str, name_suffix: str = "") -> Manifest:
        found = [d for d in self.by_kind.get(kind, [])
                 if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
        return found[0]

    def container(self, deployment_suffix: str, container: str) -> Manifest:
        pod = self.one("Deployment", deployment_suffix)["spec"]["template"]["spec"]
        matches: list[Manifest] = [c for c in pod["containers"] if c["name"] == container]
        assert matches, f"no container {container} in Deployment *{deployment_suffix}"
        return matches[0]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary(), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., Rendered]:
    """``render(*helm_args, chart=None)``: template and index one release.

    Renders are memoised per arguments (helm is deterministic): tests must not mutate them.
    """

    @functools.cache
    def _render(*args: str, chart: Path | None = None) -> Rendered:
        return Rendered(helm.template(*args, chart=chart))

    return _render


@pytest.fixture(scope="session")
def problems() -> Callable[[list[Manifest]], list[str]]:
    """``problems(docs)``: every validation failure of rendered manifests; [] when valid."""
    return all_problems
