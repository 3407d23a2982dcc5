"""A synthetic multi-format feed log with planted signal, for the second ranker.

No public log has the multi-format feed this ranker is for (short videos, long videos,
live streams and text posts in one feed, shown on several surfaces), so this module makes
one with known structure. It writes one table, one row per impression (CSV or Parquet),
in the layout ``serving/train/schemas/multiformat.yaml`` reads:

* users: ``user_id``, ``user_country`` (string), ``user_age`` (years), ``user_tenure_days``;
* context: ``surface`` (``home_feed``, ``video_tab``, ``following``) and ``hour``;
* ``history``: the items the user clicked before this request (most recent last, ids
  separated by spaces), at most 10;
* candidates: ``item_id``, ``item_format`` (``short_video``, ``long_video``, ``live``,
  ``post``), ``creator_id``, ``creator_followed`` (0/1), ``item_text_length``,
  ``item_duration_s`` (0 for posts) and ``item_age_hours``;
* requests: ``request_id``, ``day`` (1..days) and ``ts`` (seconds);
* labels: ``click``, ``long_dwell``, ``share``, ``hide``.

The planted signal (per task, a logistic model of these terms plus noise-free Bernoulli
draws): every user has a preferred format (and likes it much more than the others); every
surface favours some formats; each item has a hidden quality; a followed creator is
clicked and shared more and hidden less; a candidate whose creator the user clicked in the
history is clicked more; long videos and long posts hold attention (dwell); stale items
are clicked less. The crosses (user x format, surface x format, history x creator) are
what a per-feature logistic regression cannot express, so a ranker that learns them beats
the baseline; the per-feature terms are what both can learn.

Run: ``python -m serving.train.synthetic --out DIR [--format csv|parquet]`` (``make
synthetic``); the same seed writes the same file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FORMATS = ("short_video", "long_video", "live", "post")
SURFACES = ("home_feed", "video_tab", "following")
COUNTRIES = ("br", "de", "in", "jp", "mx", "us")
HISTORY = 10
FILE_STEM = "multiformat_log"

# surface x format: how much each surface favours each format (rows SURFACES, cols FORMATS)
_SURFACE_FORMAT = np.array([[0.3, -0.2, -0.3, 0.4],
                            [0.6, 0.6, -0.4, -1.2],
                            [-0.2, 0.0, 0.8, 0.3]])


@dataclass(frozen=True)
class Config:
    """The log's size; the defaults make about 190,000 impressions."""

    users: int = 3000
    items: int = 4000
    creators: int = 400
    days: int = 8
    requests_per_user_day: float = 1.0
    candidates: int = 8
    seed: int = 0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def generate(cfg: Config = Config()) -> pd.DataFrame:
    """The whole log, in time order (request by request)."""
    rng = np.random.default_rng(cfg.seed)
    n_users, n_items = cfg.users, cfg.items
    preferred = rng.integers(0, len(FORMATS), n_users)
    country = rng.integers(0, len(COUNTRIES), n_users)
    age = np.clip(rng.normal(32, 10, n_users), 13, 80).round()
    tenure = rng.exponential(300, n_users).round()
    activity = rng.uniform(0.6, 1.4, n_users)  # how many requests a user makes
    item_format = rng.choice(len(FORMATS), n_items, p=[0.45, 0.2, 0.1, 0.25])
    creator = rng.integers(0, cfg.creators, n_items)
    quality = rng.normal(0, 0.7, n_items)
    text_length = np.where(item_format == 3, rng.gamma(2.0, 250, n_items),
                           rng.gamma(1.5, 30, n_items)).round()
    duration = np.select([item_format == 0, item_format == 1, item_format == 2],
                         [rng.uniform(5, 60, n_items), rng.uniform(120, 1800, n_items),
                          rng.uniform(600, 7200, n_items)], 0.0).round()
    released = rng.uniform(-5, cfg.days, n_items)  # in days
    follows = rng.random((n_users, cfg.creators)) < 0.04

    rows: list[pd.DataFrame] = []
    clicked: list[list[int]] = [[] for _ in range(n_users)]
    request_id = 0
    for day in range(1, cfg.days + 1):
        n_req = rng.poisson(cfg.requests_per_user_day * activity)
        users = np.repeat(np.arange(n_users), n_req)
        ts = day * 86400 + rng.uniform(0, 86400, len(users))
        order = np.argsort(ts, kind="stable")
        users, ts = users[order], ts[order]
        surface = rng.choice(len(SURFACES), len(users), p=[0.6, 0.3, 0.1])
        sizes = rng.integers(max(1, cfg.candidates // 2), cfg.candidates * 3 // 2 + 1,
                             len(users))
        req = np.repeat(np.arange(len(users)), sizes)
        u, s = users[req], surface[req]
        items = rng.integers(0, n_items, len(req))
        released_ok = released[items] <= day
        items = np.where(released_ok, items, rng.integers(0, n_items, len(req)))
        fmt, cr = item_format[items], creator[items]
        followed = follows[u, cr]
        age_h = np.clip((day + ts[req] / 86400 % 1 - released[items]) * 24, 0.1, None)
        histories = [clicked[user][-HISTORY:] for user in users.tolist()]
        in_history = np.array([cr_j in {creator[h] for h in histories[r]}
                               for r, cr_j in zip(req.tolist(), cr.tolist(), strict=True)])
        likes_format = fmt == preferred[u]
        base = quality[items] + _SURFACE_FORMAT[s, fmt]
        click = -1.6 + 1.6 * likes_format + base + 0.9 * followed + 0.8 * in_history \
            - 0.35 * np.log1p(age_h / 24)
        dwell = -2.2 + 1.4 * (fmt == 1) + 0.9 * ((fmt == 3) & (text_length[items] > 600)) \
            + 1.2 * likes_format + 0.8 * quality[items] + 0.4 * in_history
        share = -4.2 + 1.1 * followed + 1.0 * quality[items] + 0.8 * (fmt == 2) \
            + 0.8 * likes_format
        hide = -3.4 - 1.0 * followed - 0.8 * quality[items] + 1.3 * ~likes_format \
            + 0.6 * (_SURFACE_FORMAT[s, fmt] < 0)
        labels = {name: (rng.random(len(req)) < _sigmoid(logit)).astype(np.int8)
                  for name, logit in (("click", click), ("long_dwell", dwell),
                                      ("share", share), ("hide", hide))}
        labels["long_dwell"] &= labels["click"]  # dwelling needs opening the item
        rows.append(pd.DataFrame({
            "request_id": request_id + req, "day": day, "ts": ts[req].round(3),
            "user_id": 10_000 + u, "user_country": np.array(COUNTRIES)[country[u]],
            "user_age": age[u], "user_tenure_days": tenure[u],
            "surface": np.array(SURFACES)[s], "hour": (ts[req] % 86400 // 3600).astype(int),
            "history": [" ".join(str(500_000 + h) for h in histories[r]) for r in req.tolist()],
            "item_id": 500_000 + items, "item_format": np.array(FORMATS)[fmt],
            "creator_id": 90_000 + cr, "creator_followed": followed.astype(np.int8),
            "item_text_length": text_length[items], "item_duration_s": duration[items],
            "item_age_hours": age_h.round(2), **labels}))
        for r, item in zip(req[labels["click"] == 1].tolist(),
                           items[labels["click"] == 1].tolist(), strict=True):
            clicked[int(users[r])].append(item)
        request_id += len(users)
    return pd.concat(rows, ignore_index=True)


def write(frame: pd.DataFrame, out: Path, fmt: str = "csv") -> Path:
    """``out/multiformat_log.csv`` or ``.parquet``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{FILE_STEM}.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data/multiformat"),
                        help="directory to write to (default: %(default)s)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv",
                        help="file format (default: %(default)s)")
    defaults = Config()
    for name in ("users", "items", "creators", "days", "candidates", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name),
                            help="(default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = Config(users=args.users, items=args.items, creators=args.creators, days=args.days,
                 candidates=args.candidates, seed=args.seed)
    frame = generate(cfg)
    path = write(frame, args.out, args.format)
    rates = {c: round(float(frame[c].mean()), 4) for c in ("click", "long_dwell", "share",
                                                           "hide")}
    print(f"{path}: {len(frame)} impressions, {frame['request_id'].nunique()} requests, "
          f"label rates {rates}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
