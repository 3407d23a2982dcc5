"""Offline metrics beyond global AUC: grouped AUC and per-segment AUC.

Global AUC mixes two things: ranking users against each other (who clicks more) and
ranking one user's candidates (what the feed actually does). GAUC, the impression-weighted
mean of the AUC within each group (a user, or a user's day: about one request), measures
the second; a change is chosen on both (a schedule that raised global AUC lowered GAUC).
Per-segment AUC (users who liked something before vs not) says whether a gain is more than
memorising repeat likers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Impression-weighted mean AUC over the groups that hold both classes."""
    frame = pd.DataFrame({"g": groups, "y": labels, "p": scores})
    total, weight, used = 0.0, 0, 0
    for _, part in frame.groupby("g", sort=False):
        y = part["y"].to_numpy()
        if y.min() == y.max():
            continue
        total += float(roc_auc_score(y, part["p"].to_numpy())) * len(y)
        weight, used = weight + len(y), used + 1
    return {"gauc": round(total / weight, 4) if weight else float("nan"), "groups": used,
            "impressions": weight}


def ranking_report(labels: np.ndarray, probs: np.ndarray, tasks: Sequence[str],
                   users: np.ndarray, days: np.ndarray, liked_before: np.ndarray
                   ) -> dict[str, Any]:
    """GAUC by user on long view, user-day GAUC on click and long view, and the AUC of
    click, long view and like among users who liked before and those who never did."""
    col = {t: i for i, t in enumerate(tasks)}
    user_day = users.astype(np.int64) * 100_000_000 + days.astype(np.int64)
    out: dict[str, Any] = {
        "gauc_user": {"long_view": grouped_auc(labels[:, col["long_view"]],
                                               probs[:, col["long_view"]], users)},
        "gauc_user_day": {t: grouped_auc(labels[:, col[t]], probs[:, col[t]], user_day)
                          for t in ("click", "long_view")},
        "segments": {},
    }
    for segment, mask in (("liked_before", liked_before), ("never_liked", ~liked_before)):
        entry: dict[str, Any] = {"impressions": int(mask.sum())}
        for t in ("click", "long_view", "like"):
            y = labels[mask, col[t]]
            if y.min() != y.max():
                entry[t] = round(float(roc_auc_score(y, probs[mask, col[t]])), 4)
        out["segments"][segment] = entry
    return out
