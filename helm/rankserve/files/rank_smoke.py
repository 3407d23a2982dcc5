"""`helm test` for rankserve: one real ranking request through the gateway Service.

Runs inside the gateway image with only the standard library. Exits 0 when /v1/rank answers
200 with at most top_k candidates, each one of those sent, ranked by non-increasing score;
otherwise prints what was wrong and exits 1. Environment: RANKSERVE_URL (the Service),
RANKSERVE_CANDIDATES, RANKSERVE_TOP_K, and RANKSERVE_AUTH_TOKEN when auth is on.
"""

import json
import os
import sys
import urllib.error
import urllib.request


def rank_request(candidates: int, top_k: int) -> dict:
    return {
        "request_id": "helm-test",
        "user": {"user_id": 1},
        "context": {"tab": 1, "hour": 12},
        "history": [101, 102, 103],
        "candidates": [{"video_id": 1000 + i} for i in range(candidates)],
        "top_k": top_k,
    }


def check(body: dict, sent: set, top_k: int) -> str:
    """Return an error message, or an empty string when the ranking is plausible.

    The response is columnar (docs/api.md): ``video_id`` and ``score`` lists, best first.
    """
    ids, scores = body.get("video_id"), body.get("score")
    if not isinstance(ids, list) or not ids:
        return f"no non-empty 'video_id' list in {body!r}"
    if not isinstance(scores, list) or len(scores) != len(ids):
        return f"'score' does not pair with 'video_id' in {body!r}"
    if len(ids) > top_k:
        return f"{len(ids)} results for top_k={top_k}"
    if not set(ids) <= sent:
        return f"ids not in the request: {sorted(set(ids) - sent)}"
    if any(not isinstance(s, (int, float)) for s in scores):
        return f"non-numeric scores: {scores}"
    if any(a < b for a, b in zip(scores, scores[1:], strict=False)):
        return f"scores not in ranked order: {scores}"
    return ""


def main() -> int:
    url = os.environ["RANKSERVE_URL"].rstrip("/") + "/v1/rank"
    top_k = int(os.environ.get("RANKSERVE_TOP_K", "5"))
    payload = rank_request(int(os.environ.get("RANKSERVE_CANDIDATES", "20")), top_k)
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("RANKSERVE_AUTH_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        print(f"FAIL {url}: HTTP {e.code}: {e.read()[:500]!r}")
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"FAIL {url}: {e}")
        return 1
    error = check(body, {c["video_id"] for c in payload["candidates"]}, top_k)
    if error:
        print(f"FAIL {url}: {error}")
        return 1
    print(f"OK {url}: {len(body['video_id'])} ranked, model {body.get('model')!r}, "
          f"degraded={body.get('degraded')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
