"""Version folders: ASCII digits only, the same rule for every reader of the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.repository.versions import parse_version, version_folders, versions_on_disk


@pytest.mark.parametrize(("text", "expected"), [
    ("1", 1), ("01", 1), ("12", 12), ("\u00b2", None), ("\u0661", None), ("-1", None),
    ("+1", None), ("1.0", None), ("", None), (" 1", None), (str(2**63), None),
])
def test_versions_are_ascii_digits(text: str, expected: int | None) -> None:
    assert parse_version(text) == expected


def test_folders_that_only_look_numeric_are_not_versions(tmp_path: Path) -> None:
    for name in ("1", "3", "\u00b2", "x", "2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"")
    (tmp_path / "7").write_text("a file, not a folder")
    (tmp_path / "4").mkdir()  # no model file
    assert [v for v, _ in version_folders(tmp_path)] == [1, 2, 3, 4]
    assert versions_on_disk(tmp_path, "model.onnx") == [1, 2, 3]
