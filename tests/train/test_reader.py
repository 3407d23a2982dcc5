"""The schema-driven data reader: CSV and Parquet alike, columns mapped by the schema,
requests and sequences as its data section says, and missing columns named by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from serving.repository.schema import Schema, SchemaError
from serving.train.data import SCHEMA_DIR, group_requests, load_log, load_requests
from serving.train.reader import DataLayout, parse_id_list

MULTIFORMAT = SCHEMA_DIR / "multiformat.yaml"


def raw_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MULTIFORMAT.read_text())
    return loaded


def edited(edit: Any) -> Schema:
    raw = copy.deepcopy(raw_schema())
    edit(raw)
    return Schema.parse(raw)


def test_csv_and_parquet_read_the_same(synthetic_dir: Path) -> None:
    csv = load_log(synthetic_dir, Schema.load(MULTIFORMAT))
    parquet = load_log(synthetic_dir, edited(
        lambda r: r["data"].update(impressions="multiformat_log.parquet")))
    names = [f.name for f in csv.schema.features if f.kind != "id_sequence"]
    pd.testing.assert_frame_equal(csv.impressions[names], parquet.impressions[names],
                                  check_dtype=False)
    assert len(csv.clicks) == 0  # the history is a column, not drawn from engagements


def test_requests_group_by_the_keys_and_carry_their_history_column(
        synthetic_dir: Path) -> None:
    schema = Schema.load(MULTIFORMAT)
    log = load_log(synthetic_dir, schema).days([3])
    grouped = group_requests(log)
    frame = log.impressions
    assert len(grouped) == frame["request_id"].nunique()
    assert grouped.offsets[-1] == len(frame)
    first = frame.groupby("request_id", sort=True).head(1).set_index("request_id")
    for row in range(0, len(grouped), 97):
        request = int(grouped.requests["request_id"].iloc[row])
        assert grouped.histories[row] == parse_id_list(first.loc[request, "history"])
        items = grouped.items.iloc[grouped.offsets[row]:grouped.offsets[row + 1]]
        assert set(items["request_id"]) == {request}
    assert grouped.labels().shape == (len(frame), 4)  # click, dwell, share, hide
    np.testing.assert_array_equal(grouped.labels()[:, 1],
                                  grouped.items["long_dwell"].to_numpy(np.float32))


def test_replayed_bodies_carry_only_the_schemas_names(synthetic_dir: Path) -> None:
    schema = Schema.load(MULTIFORMAT)
    bodies = load_requests(synthetic_dir, schema=schema, limit=20)
    assert bodies
    for body in bodies:
        assert body["request_id"].startswith("multiformat-")
        assert set(body["user"]) <= schema.feature_names("user")
        assert set(body["context"]) <= schema.feature_names("context")
        for candidate in body["candidates"]:
            assert "item_id" in candidate
            assert set(candidate) <= schema.feature_names("candidate")


def test_a_feature_reads_its_column_under_its_own_name(synthetic_dir: Path) -> None:
    def rename(raw: dict[str, Any]) -> None:
        raw["features"][3].update(name="tenure", column="user_tenure_days")
    log = load_log(synthetic_dir, edited(rename))
    np.testing.assert_array_equal(log.impressions["tenure"],
                                  log.impressions["user_tenure_days"])


@pytest.mark.parametrize(("edit", "field", "words"), [
    (lambda r: r["tasks"][2].update(label="shared"), "tasks[2].label", "'shared'"),
    (lambda r: r["features"][3].update(column="tenure_d"), "features[3].column", "tenure_d"),
    (lambda r: r["features"][1].update(name="country"), "features[1].name", "country"),
    (lambda r: r["data"]["request"].update(day="date"), "data.request.day", "'date'"),
    (lambda r: r["data"]["sequences"]["history"].update(column="watched"),
     "data.sequences.history.column", "'watched'"),
])
def test_a_column_the_data_lacks_is_named_by_its_schema_field(
        synthetic_dir: Path, edit: Any, field: str, words: str) -> None:
    with pytest.raises(SchemaError) as err:
        load_log(synthetic_dir, edited(edit))
    assert err.value.field == field
    assert words in err.value.message
    assert "which the data lacks" in err.value.message


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.pop("data"), "data"),
    (lambda r: r["data"].pop("split"), "data.split"),
    (lambda r: r["data"]["split"].update(test=[]), "data.split.test"),
    (lambda r: r["data"].update(format="kuairand"), "data.format"),
    (lambda r: r["data"].update(impressions="log.json"), "data.impressions"),
    (lambda r: r["data"]["request"].pop("keys"), "data.request.keys"),
    (lambda r: r["data"].update(derive={"x": {"op": "sqrt", "column": "a"}}),
     "data.derive.x.op"),
])
def test_a_bad_data_section_is_refused_naming_the_field(edit: Any, field: str) -> None:
    with pytest.raises(SchemaError) as err:
        DataLayout.of(edited(edit))
    assert err.value.field == field


def test_id_lists_parse_from_strings_lists_and_blanks() -> None:
    assert parse_id_list("3 5,9") == [3, 5, 9]
    assert parse_id_list([4, 2]) == [4, 2]
    assert parse_id_list(np.array([7])) == [7]
    assert parse_id_list(None) == []
    assert parse_id_list(float("nan")) == []
    assert parse_id_list("") == []
