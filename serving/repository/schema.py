"""The feature schema as data: one declarative file per model (docs/schema.md).

A schema lists the model's features (name, side, kind, transform, default, required), its
tasks with their label columns and the default value-model weights. It is recorded whole
in the model card (``schema``), so a served model carries its own; the encoder, training
and export follow it. Parsing refuses a bad file with :class:`SchemaError` naming the
offending field (``features[3].kind``).

The model's input tensors follow from the schema by one rule (:meth:`Schema.inputs`):

* user and context features make the *user group* (one row per request, prefix ``user``),
  candidate features the *item group* (one row per candidate, prefix ``item``);
* a group's categorical feature marked ``id: true`` (at most one per group) is the tensor
  ``<prefix>_id`` ``int64 [rows]``; its other categoricals, in file order, are the columns
  of ``<prefix>_cat`` ``int64 [rows, F]``; its numerics, in file order, ``<prefix>_num``
  ``float32 [rows, F]``; a group tensor with no features is not an input;
* an id sequence (user group only) is its own tensor, named after the feature,
  ``int64 [R, length]``, its ids taken from the vocabulary of the feature it names in
  ``vocabulary_of``;
* ``item_to_user`` ``int64 [N]`` maps each candidate row to its request row; the output is
  ``probs`` ``float32 [N, T]`` in task order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from serving.errors import ModelCardError
from serving.repository.card import ModelCard
from serving.repository.counters import CounterSpec, parse_counters
from serving.repository.tensors import TensorSpec

Side = Literal["user", "context", "candidate"]
Kind = Literal["categorical_id", "categorical_string", "numeric", "id_sequence"]
SIDES: tuple[str, ...] = ("user", "context", "candidate")
KINDS: tuple[str, ...] = ("categorical_id", "categorical_string", "numeric", "id_sequence")
CATEGORICAL_TRANSFORMS = ("vocabulary", "hash")
NUMERIC_TRANSFORMS = ("log1p_standardize", "standardize", "log1p", "identity", "clip",
                      "bucketize")
TRANSFORMS: dict[str, tuple[str, ...]] = {
    "categorical_id": CATEGORICAL_TRANSFORMS, "categorical_string": CATEGORICAL_TRANSFORMS,
    "numeric": NUMERIC_TRANSFORMS, "id_sequence": ("vocabulary",)}
DEFAULT_TRANSFORM = {"categorical_id": "vocabulary", "categorical_string": "vocabulary",
                     "numeric": "log1p_standardize", "id_sequence": "vocabulary"}

ITEM_TO_USER, PROBS = "item_to_user", "probs"
GROUP_PREFIX = {"user": "user", "context": "user", "candidate": "item"}
REQUEST_FIELD = {"user": "user", "context": "context", "candidate": "candidates"}


class SchemaError(ModelCardError):
    """A schema file (or a card's ``schema``) that cannot be served; names the field."""


@dataclass(frozen=True)
class Feature:
    """One feature of the schema; see docs/schema.md for every field."""

    name: str
    side: Side
    kind: Kind
    transform: str
    required: bool = False
    id: bool = False
    default: float | str | None = None
    buckets: int | None = None
    length: int | None = None
    vocabulary_of: str | None = None
    min_count: int = 1
    column: str | None = None
    bounds: tuple[float | None, float | None] | None = None
    boundaries: tuple[float, ...] | None = None

    @property
    def group(self) -> str:
        return GROUP_PREFIX[self.side]

    @property
    def categorical(self) -> bool:
        return self.kind in ("categorical_id", "categorical_string")

    @property
    def path(self) -> str:
        """The request-body path of the feature, used in every error message."""
        if self.kind == "id_sequence" and self.name == "history":
            return "history"
        return f"{REQUEST_FIELD[self.side]}.{self.name}"

    @property
    def source(self) -> str:
        """The column of the training files that holds this feature."""
        return self.column or self.name

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()
               if v is not None and not (k in ("required", "id") and v is False)
               and not (k == "min_count" and v == 1)}
        for key in ("bounds", "boundaries"):  # JSON and YAML lists, as the file wrote them
            if key in out:
                out[key] = list(out[key])
        return out


@dataclass(frozen=True)
class Task:
    name: str
    label: str | None = None


@dataclass(frozen=True)
class Schema:
    """A parsed schema; :meth:`parse` checks it, :meth:`to_dict` writes it back."""

    name: str
    features: tuple[Feature, ...]
    tasks: tuple[Task, ...]
    value_weights: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    counters: tuple[CounterSpec, ...] = ()
    """Counting features (serving/repository/counters.py); their produced numeric features
    are in ``features`` too, after the declared ones."""

    # -- the tensor rule -------------------------------------------------------------------

    def group_features(self, group: str, what: str) -> tuple[Feature, ...]:
        """``what``: ``id``, ``cat``, ``num`` or ``seq`` features of ``group`` in file order."""
        def keep(f: Feature) -> bool:
            if f.group != group:
                return False
            return {"id": f.categorical and f.id, "cat": f.categorical and not f.id,
                    "num": f.kind == "numeric", "seq": f.kind == "id_sequence"}[what]
        return tuple(f for f in self.features if keep(f))

    def id_feature(self, group: str) -> Feature | None:
        found = self.group_features(group, "id")
        return found[0] if found else None

    def inputs(self) -> list[tuple[str, str, int | None]]:
        """``(tensor name, group, width)`` of every model input in order (width ``None``: a
        ``[rows]`` tensor); see the module docstring for the rule."""
        out: list[tuple[str, str, int | None]] = []
        for group in ("user", "item"):
            if self.id_feature(group) is not None:
                out.append((f"{group}_id", group, None))
            for part in ("cat", "num"):
                width = len(self.group_features(group, part))
                if width:
                    out.append((f"{group}_{part}", group, width))
            if group == "user":
                out += [(f.name, "user", f.length) for f in self.group_features("user", "seq")]
        out.append((ITEM_TO_USER, "item", None))
        return out

    def input_names(self, group: str | None = None) -> tuple[str, ...]:
        return tuple(n for n, g, _ in self.inputs() if group is None or g == group)

    def batch_inputs(self) -> tuple[tuple[str, ...], tuple[str, ...], str]:
        """How the model's requests merge into a batch: the per-request inputs (the user
        group, ``[R, ...]``), the per-candidate inputs (the item group, ``[N, ...]``,
        without the index) and the index input mapping candidates to request rows."""
        items = tuple(n for n in self.input_names("item") if n != ITEM_TO_USER)
        return self.input_names("user"), items, ITEM_TO_USER

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def feature_names(self, side: str) -> frozenset[str]:
        """What a request may send on ``side`` (``user``, ``context``, ``candidate``)."""
        return frozenset(f.name for f in self.features if f.side == side)

    def counter_features(self) -> frozenset[str]:
        """The numeric features the counters produce: computed in training, joined from the
        snapshot when serving, so neither the schema file nor a request need declare them."""
        return frozenset(n for c in self.counters for n in c.feature_names())

    def without_counters(self) -> Schema:
        """This schema with no counters and none of their features (the ablation, and the
        baseline the card reports beside the one with counters)."""
        produced = self.counter_features()
        return replace(self, counters=(),
                       features=tuple(f for f in self.features if f.name not in produced))

    def labels(self) -> dict[str, str]:
        return {t.name: t.label or t.name for t in self.tasks}

    # -- reading and writing ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        produced = self.counter_features()
        out: dict[str, Any] = {"name": self.name,
                               "features": [f.to_dict() for f in self.features
                                            if f.name not in produced],
                               "tasks": [{k: v for k, v in asdict(t).items() if v is not None}
                                         for t in self.tasks],
                               "value_weights": dict(self.value_weights)}
        if self.data:
            out["data"] = self.data
        if self.counters:
            out["counters"] = [c.to_dict() for c in self.counters]
        return out

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read a YAML or JSON schema file (``extends: FILE`` takes another file's sections,
        each top-level key of this one replacing the base's, so a variant is not a copy).

        Raises:
            SchemaError: unreadable or invalid; the message names the field.
        """
        return cls.parse(_read_schema_file(Path(path)))

    @classmethod
    def parse(cls, raw: Any) -> Schema:
        """Check and build a schema from its dict form.

        Raises:
            SchemaError: naming the offending field.
        """
        if not isinstance(raw, Mapping):
            raise SchemaError("a schema must be a mapping", field="schema")
        _only(raw, {"name", "features", "tasks", "value_weights", "data", "counters"}, "")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaError("'name' must be a non-empty string", field="name")
        features = raw.get("features")
        if not isinstance(features, list) or not features:
            raise SchemaError("'features' must be a non-empty list", field="features")
        parsed = tuple(_feature(f, i) for i, f in enumerate(features))
        tasks_raw = raw.get("tasks")
        if not isinstance(tasks_raw, list) or not tasks_raw:
            raise SchemaError("'tasks' must be a non-empty list", field="tasks")
        tasks = tuple(_task(t, i) for i, t in enumerate(tasks_raw))
        weights = raw.get("value_weights") or {}
        if not isinstance(weights, Mapping):
            raise SchemaError("'value_weights' must map task names to numbers",
                              field="value_weights")
        task_names = [t.name for t in tasks]
        for key, value in weights.items():
            if key not in task_names:
                raise SchemaError(f"'value_weights.{key}' names no task "
                                  f"(tasks: {', '.join(task_names)})",
                                  field=f"value_weights.{key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchemaError(f"'value_weights.{key}' must be a number",
                                  field=f"value_weights.{key}")
        data = raw.get("data") or {}
        if not isinstance(data, Mapping):
            raise SchemaError("'data' must be a mapping", field="data")
        counters = parse_counters(raw.get("counters"), parsed, [t.label or t.name for t in tasks])
        parsed += tuple(_feature(f, len(parsed) + j)
                        for j, f in enumerate(d for c in counters for d in c.feature_dicts()))
        schema = cls(name, parsed, tasks, {k: float(v) for k, v in weights.items()}, dict(data),
                     counters)
        _check_whole(schema)
        return schema


_FEATURE_KEYS = {"name", "side", "kind", "transform", "required", "id", "default", "buckets",
                 "length", "vocabulary_of", "min_count", "column", "bounds", "boundaries"}


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise SchemaError(f"'{path}' is not a schema field (allowed: "
                              f"{', '.join(sorted(allowed))})", field=path)


def _feature(raw: Any, i: int) -> Feature:
    where = f"features[{i}]"
    if not isinstance(raw, Mapping):
        raise SchemaError(f"'{where}' must be a mapping", field=where)
    _only(raw, _FEATURE_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise SchemaError(f"'{where}.name' must be an identifier", field=f"{where}.name")
    where = f"features[{i}] ({name})"
    side, kind = raw.get("side"), raw.get("kind")
    if side not in SIDES:
        raise SchemaError(f"'{where}.side' must be one of {', '.join(SIDES)}, got {side!r}",
                          field=f"features[{i}].side")
    if kind not in KINDS:
        raise SchemaError(f"'{where}.kind' must be one of {', '.join(KINDS)}, got {kind!r}",
                          field=f"features[{i}].kind")
    transform = raw.get("transform", DEFAULT_TRANSFORM[kind])
    if transform not in TRANSFORMS[kind]:
        raise SchemaError(f"'{where}.transform' {transform!r} does not fit kind {kind} "
                          f"(use one of {', '.join(TRANSFORMS[kind])})",
                          field=f"features[{i}].transform")
    for key in ("required", "id"):
        if not isinstance(raw.get(key, False), bool):
            raise SchemaError(f"'{where}.{key}' must be true or false",
                              field=f"features[{i}].{key}")
    ints = {k: raw.get(k) for k in ("buckets", "length", "min_count") if k in raw}
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SchemaError(f"'{where}.{key}' must be a positive integer",
                              field=f"features[{i}].{key}")
    feature = Feature(name=name, side=cast(Side, side), kind=cast(Kind, kind),
                      transform=transform, required=raw.get("required", False),
                      id=raw.get("id", False), default=raw.get("default"),
                      buckets=ints.get("buckets"), length=ints.get("length"),
                      vocabulary_of=raw.get("vocabulary_of"),
                      min_count=int(ints.get("min_count") or 1), column=raw.get("column"),
                      bounds=_numbers(raw, "bounds", where, i, nullable=True),
                      boundaries=_numbers(raw, "boundaries", where, i, nullable=False))
    _check_feature(feature, where, i)
    return feature


def _numbers(raw: Mapping[str, Any], key: str, where: str, i: int, nullable: bool) -> Any:
    """``bounds`` (``[low, high]``, either may be null) or ``boundaries`` (ascending)."""
    if key not in raw:
        return None
    value = raw[key]

    def number(v: Any) -> bool:
        return (v is None and nullable) or (isinstance(v, (int, float))
                                            and not isinstance(v, bool) and v == v
                                            and abs(v) != float("inf"))
    if not isinstance(value, list) or not value or not all(map(number, value)):
        kind = "a list [low, high] of numbers or null" if nullable \
            else "a non-empty list of finite numbers"
        raise SchemaError(f"'{where}.{key}' must be {kind}", field=f"features[{i}].{key}")
    return tuple(None if v is None else float(v) for v in value)


def _check_feature(f: Feature, where: str, i: int) -> None:
    def fail(key: str, message: str) -> None:
        raise SchemaError(f"'{where}.{key}' {message}", field=f"features[{i}].{key}")

    if f.id and not f.categorical:
        fail("id", "is only for categorical features")
    if (f.transform == "hash") != (f.buckets is not None):
        fail("buckets", "is needed by, and only by, transform: hash")
    _check_bounds(f, fail)
    if f.kind == "id_sequence":
        if f.side == "candidate":
            fail("side", "of an id_sequence must be user or context")
        if f.length is None:
            fail("length", "is required for an id_sequence")
        if f.vocabulary_of is None:
            fail("vocabulary_of", "must name the categorical feature whose ids it holds")
    elif f.length is not None or f.vocabulary_of is not None:
        fail("length" if f.length is not None else "vocabulary_of",
             "is only for kind id_sequence")
    number = isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
    if f.default is not None and (f.kind != "numeric" or not (number or f.default == "median")):
        fail("default", "must be a number or 'median', for numeric features only "
                        "(a missing categorical maps to id 0)")


def _check_bounds(f: Feature, fail: Callable[[str, str], None]) -> None:
    """``bounds`` belongs to ``clip`` and ``boundaries`` to ``bucketize``, each well formed."""
    if (f.transform == "clip") != (f.bounds is not None):
        fail("bounds", "is needed by, and only by, transform: clip")
    if f.bounds is not None:
        low, high = (*f.bounds, None, None)[:2]
        if len(f.bounds) != 2 or (low is None and high is None) or \
                (low is not None and high is not None and low >= high):
            fail("bounds", "must be [low, high] with low < high (one of them may be null)")
    if (f.transform == "bucketize") != (f.boundaries is not None):
        fail("boundaries", "is needed by, and only by, transform: bucketize")
    if f.boundaries is not None and any(
            a >= b for a, b in zip(f.boundaries, f.boundaries[1:], strict=False)):
        fail("boundaries", "must be strictly increasing")


def _task(raw: Any, i: int) -> Task:
    where = f"tasks[{i}]"
    if isinstance(raw, str):
        return Task(raw)
    if not isinstance(raw, Mapping):
        raise SchemaError(f"'{where}' must be a task name or a mapping", field=where)
    _only(raw, {"name", "label"}, where)
    name, label = raw.get("name"), raw.get("label")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"'{where}.name' must be a non-empty string", field=f"{where}.name")
    if label is not None and (not isinstance(label, str) or not label):
        raise SchemaError(f"'{where}.label' must name a label column", field=f"{where}.label")
    return Task(name, label)


def _check_whole(schema: Schema) -> None:
    seen: dict[str, int] = {}
    for i, f in enumerate(schema.features):
        if f.name in seen:
            other = schema.features[seen[f.name]]
            raise SchemaError(
                f"'features[{i}].name' {f.name!r} is declared twice (sides {other.side} and "
                f"{f.side}): a feature has one side", field=f"features[{i}].name")
        seen[f.name] = i
    for group in ("user", "item"):
        ids = schema.group_features(group, "id")
        if len(ids) > 1:
            raise SchemaError(f"the {group} group has more than one 'id: true' feature "
                              f"({', '.join(f.name for f in ids)})",
                              field=f"features[{seen[ids[1].name]}].id")
    if schema.id_feature("item") is None:
        raise SchemaError("one candidate feature must be 'id: true' (the id a ranked "
                          "response returns)", field="features")
    for f in schema.group_features("user", "seq"):
        target = f.vocabulary_of
        ok = target in seen and schema.features[seen[target]].kind == "categorical_id" \
            and schema.features[seen[target]].transform == "vocabulary"
        if not ok:
            raise SchemaError(f"'features[{seen[f.name]}].vocabulary_of' must name a "
                              f"categorical_id feature with a vocabulary, got {target!r}",
                              field=f"features[{seen[f.name]}].vocabulary_of")
    names = [t.name for t in schema.tasks]
    if len(set(names)) != len(names):
        raise SchemaError("'tasks' names a task twice", field="tasks")


def from_legacy_card(features: Mapping[str, Any], tasks: Sequence[str],
                     value_weights: Mapping[str, float], name: str) -> Schema:
    """The schema a card written before schemas existed implies (its ``features`` section:
    categorical and numeric lists and ``history_length``): a required categorical is its
    group's id feature, and the history is an id sequence named ``history`` over the
    candidate id's vocabulary. The tensors it yields are the ones that card's graph takes.

    Raises:
        SchemaError: the section does not describe a servable schema.
    """
    sides = {"item": "candidate"}
    kinds = {"int": "categorical_id", "str": "categorical_string"}
    out: list[dict[str, Any]] = []
    try:
        for c in features["categorical"]:
            out.append({"name": c["name"], "side": sides.get(c["side"], c["side"]),
                        "kind": kinds[c["kind"]], "required": bool(c["required"]),
                        "id": bool(c["required"])})
        for c in features["numeric"]:
            out.append({"name": c["name"], "side": sides.get(c["side"], c["side"]),
                        "kind": "numeric", "transform": c.get("transform", "log1p_standardize"),
                        "default": "median"})
        item_id = next(f["name"] for f in out if f["id"] and f["side"] == "candidate")
    except (KeyError, TypeError, StopIteration) as e:
        raise SchemaError(f"card features section cannot be read as a schema: {e}",
                          field="features") from None
    # the id features first, then the rest in card order: the card lists them that way
    out.append({"name": "history", "side": "user", "kind": "id_sequence",
                "length": int(features.get("history_length", 20)), "vocabulary_of": item_id})
    return Schema.parse({"name": name, "features": out, "tasks": list(tasks),
                         "value_weights": dict(value_weights)})


def schema_of_card(card: ModelCard) -> Schema:
    """The schema a model card records, or (a card from before schemas) the one its
    ``features`` section implies.

    Raises:
        SchemaError: the recorded schema is invalid.
    """
    if card.schema:
        return Schema.parse(card.schema)
    return from_legacy_card(card.features, card.tasks, card.value_weights, card.name)


def card_batch_inputs(card: ModelCard) -> tuple[tuple[str, ...], tuple[str, ...], str] | None:
    """:meth:`Schema.batch_inputs` of a card's schema; ``None`` when it has no valid one."""
    try:
        return schema_of_card(card).batch_inputs()
    except ModelCardError:
        return None


def disagreements(schema: Schema, card: ModelCard, graph_inputs: Mapping[str, TensorSpec],
                  where: str) -> list[str]:
    """How a card's schema disagrees with its graph's inputs (the tensor rule), with its
    tasks, and with the fitted state recorded in its ``features``."""
    problems = []
    expected = schema.inputs()
    for name, _, width in expected:
        tensor = graph_inputs.get(name)
        if tensor is None:
            problems.append(f"{where}: the schema yields input '{name}', which the graph "
                            f"lacks (graph inputs: {', '.join(sorted(graph_inputs))})")
            continue
        shape = tensor.shape
        fits = len(shape) == 1 if width is None else (len(shape) == 2
                                                       and shape[1] in (-1, width))
        if not fits:
            want = "[rows]" if width is None else f"[rows, {width}]"
            problems.append(f"{where}: the schema yields '{name}' {want}, the graph takes "
                            f"dims {list(shape)}")
    names = {name for name, _, _ in expected}
    problems += [f"{where}: graph input '{name}' follows from no feature of the schema"
                 for name in graph_inputs if name not in names]
    tasks = [t.name for t in schema.tasks]
    if tasks != list(card.tasks):
        problems.append(f"{where}: schema tasks {tasks} differ from the card's tasks "
                        f"{list(card.tasks)}")
    fitted = {c.get("name") for c in card.features.get("categorical", [])} | \
        {c.get("name") for c in card.features.get("numeric", [])}
    for f in schema.features:
        needs_state = (f.categorical and f.transform == "vocabulary") or f.kind == "numeric"
        if needs_state and f.name not in fitted:
            problems.append(f"{where}: schema feature '{f.name}' has no fitted state in "
                            f"'features'")
    return problems


EXTENDS_DEPTH = 4
"""How many files one schema may reach through ``extends`` (a cycle stops here)."""


def _read_schema_file(path: Path, depth: int = 0) -> Any:
    """A schema file's document, with its ``extends`` base (a path relative to the file)
    merged beneath it."""
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SchemaError(f"schema {path.name} cannot be read: {e}", field=str(path)) from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    base = raw.pop("extends")
    if not isinstance(base, str) or not base:
        raise SchemaError(f"schema {path.name}: extends must name a schema file",
                          field="extends")
    if depth >= EXTENDS_DEPTH:
        raise SchemaError(f"schema {path.name}: extends reaches more than {EXTENDS_DEPTH} "
                          "files (a cycle?)", field="extends")
    underneath = _read_schema_file(path.parent / base, depth + 1)
    if not isinstance(underneath, dict):
        raise SchemaError(f"schema {base} (extended by {path.name}) is not a mapping",
                          field="extends")
    return {**underneath, **raw}
