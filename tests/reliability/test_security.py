"""Security promises: bearer auth on /v1 and /v2 (constant time), admin endpoints off unless
enabled, body and candidate limits before parsing, model names only from the repository,
garbage at the HTTP layer refused without harm, and no pickle or eval on the request path.
"""

from __future__ import annotations

import ast
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.gateway import rules
from tests.reliability.live_gateway import PROJECT, LiveGateway, error_of, live_gateway

TOKEN = "s3cret-token"
LIMIT = 64 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    yield from live_gateway(auth_token=TOKEN, max_body_bytes=LIMIT, max_candidates=50)


@pytest.fixture(scope="module")
def body(heldout: list[dict[str, Any]]) -> bytes:
    return json.dumps({**heldout[0], "candidates": heldout[0]["candidates"][:20],
                       "budget_ms": 10_000}).encode()


def auth(token: str | bytes) -> dict[str, str | bytes]:
    return {**JSON, "Authorization": token}


def test_bearer_token_guards_v1_and_v2_only(gateway: LiveGateway, body: bytes,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = rules.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(rules, "compare_digest", spy)
    wrong: list[str | bytes] = ["", "Bearer", "Bearer ", f"Bearer {TOKEN[:-1]}",
                                f"Bearer {TOKEN}x", f"bearer {TOKEN}", TOKEN,
                                f"Basic {TOKEN}", b"Bearer \xff\xfe", "Bearer s3cr\u00e9t"]
    for value in wrong:
        for path in ("/v1/rank", "/v2/models/feed_ranker/infer"):
            answer = gateway.check(gateway.request("POST", path, body, auth(value)), value)
            assert answer.status == 401, (value, path)
            assert error_of(answer.json())["field"] == "Authorization"
    assert gateway.request("GET", "/v2/models/feed_ranker", b"", auth("")).status == 401
    assert gateway.check(gateway.request("POST", "/v1/rank", body, auth(f"Bearer {TOKEN}"))
                         ).status == 200
    assert len(compared) >= 2 * len(wrong) + 1  # every check went through compare_digest
    assert all(isinstance(a, bytes) and b == f"Bearer {TOKEN}".encode() for a, b in compared)
    for probe in ("/healthz", "/readyz", "/metrics"):  # probes need no token
        assert gateway.request("GET", probe).status == 200


def test_admin_endpoints_are_off_by_default(gateway: LiveGateway) -> None:
    assert not [r for r in gateway.app.router.resources() if r.canonical.startswith("/admin")]
    for method, path in [("GET", "/admin/models"), ("POST", "/admin/reload"),
                         ("POST", "/admin/models/feed_ranker/load")]:
        answer = gateway.check(gateway.request(method, path, b'{"version": 1}',
                                               auth(f"Bearer {TOKEN}")))
        assert answer.status == 404


def test_enabled_admin_needs_its_own_token() -> None:
    for gateway in live_gateway(admin_enabled=True, admin_token="adm1n", auth_token=TOKEN):
        for value in ["", f"Bearer {TOKEN}", "Bearer adm1", b"Bearer \xff", "Bearer \u00e9"]:
            answer = gateway.check(gateway.request("GET", "/admin/models", b"", auth(value)),
                                   value)
            assert answer.status in (401, 403), value
        answer = gateway.check(gateway.request("POST", "/admin/models/..%2F..%2Fetc/load",
                                               b'{"version": 1}', auth("Bearer adm1n")))
        assert answer.status in (400, 404)
        assert gateway.request("GET", "/admin/models", b"", auth("Bearer adm1n")).status == 200


def raw_exchange(gateway: LiveGateway, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send ``head`` then ``chunks`` until the server answers or closes; its answer."""
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: it has answered
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_a_huge_content_length_is_refused_before_the_body_is_read(
        gateway: LiveGateway) -> None:
    head = (b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Length: 1000000000000\r\n\r\n")
    started = time.monotonic()
    answer = raw_exchange(gateway, head, iter(()))  # not one byte of the body is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    assert time.monotonic() - started < 10


def test_a_chunked_body_over_the_limit_is_refused(gateway: LiveGateway) -> None:
    head = (b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b" " * 8192
    frames = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(4 * LIMIT // 8192))
    answer = raw_exchange(gateway, head, frames)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_candidate_count_is_checked_before_features(gateway: LiveGateway,
                                                    heldout: list[dict[str, Any]]) -> None:
    bad = [{"video_id": "not an id", "duration_ms": "x"}] * 51  # 51 > 50, all invalid
    answer = gateway.check(gateway.request("POST", "/v1/rank", json.dumps(
        {**heldout[0], "candidates": bad}).encode(), auth(f"Bearer {TOKEN}")))
    assert answer.status == 413
    assert error_of(answer.json())["field"] == "candidates"


TRAVERSALS = ["..%2F..%2Fetc", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", "feed_ranker%2F..",
              "%2Fetc%2Fpasswd", "feed_ranker%00", "..%5C..%5Cwindows", "~root",
              "feed_ranker%2F1%2Fmodel.onnx", "model_repository", "x" * 300]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_come_only_from_the_repository(gateway: LiveGateway, body: bytes,
                                                   name: str) -> None:
    for method, path in [("POST", f"/v2/models/{name}/infer"),
                         ("GET", f"/v2/models/{name}/config"),
                         ("GET", f"/v2/models/{name}"),
                         ("GET", f"/v2/models/feed_ranker/versions/{name}/config"),
                         ("POST", f"/v2/models/{name}/versions/1/infer")]:
        answer = gateway.check(gateway.request(method, path, body, auth(f"Bearer {TOKEN}")),
                               path)
        assert answer.status in (400, 404), (path, answer.status)
    document = {**json.loads(body), "model": name.replace("%2F", "/")}
    answer = gateway.check(gateway.request("POST", "/v1/rank", json.dumps(document).encode(),
                                           auth(f"Bearer {TOKEN}")))
    assert answer.status == 404


@pytest.mark.parametrize("head", [
    b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\x01b\r\nContent-Length: 0\r\n\r\n",
    b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
])
def test_http_layer_garbage_is_refused_and_harms_no_one(gateway: LiveGateway, body: bytes,
                                                        head: bytes) -> None:
    """Malformed HTTP never reaches the gateway's code: aiohttp's parser answers 4xx (its
    own plain-text body) or closes the connection; the server keeps serving."""
    answer = gateway.raw(head)
    assert answer is None or 400 <= answer.status < 500
    assert gateway.check(gateway.request("POST", "/v1/rank", body, auth(f"Bearer {TOKEN}"))
                         ).status == 200


def test_the_raw_probe_sees_answers(gateway: LiveGateway, body: bytes) -> None:
    """The garbage test above can fail: ``raw`` reads the server's answer (a half-closed
    probe got none, so a 500 would have passed as ``None``)."""
    head = (f"POST /v1/rank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    answer = gateway.raw(head + body)
    assert answer is not None
    assert answer.status == 200
    wrong = gateway.raw(b"GET /v2/models/feed_ranker/versions/" + b"1" * 5000 + b" HTTP/1.1\r\n"
                        b"Host: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    assert wrong is not None
    gateway.check(wrong)  # a 500 here (before: int() of 5,000 digits) fails the contract


REQUEST_PATH = ["gateway", "batching", "backends", "ranking", "repository", "telemetry",
                "rollout", "client.py", "errors.py", "settings.py"]
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
SUBPROCESS_ALLOWED = {"localtriton/server.py"}  # starts a local tritonserver (a CLI)


def request_path_files() -> list[Path]:
    root = PROJECT / "serving"
    files: list[Path] = []
    for part in REQUEST_PATH:
        path = root / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return [f for f in files if f.exists()]


def findings(path: Path) -> list[str]:  # noqa: C901 (one check per kind of finding)
    """What in ``path`` could execute data: pickle-family imports, eval/exec/compile,
    ``yaml.load`` without a safe loader, ``numpy.load(allow_pickle=True)``,
    ``torch.load``, and subprocess outside the modules allowed to start processes."""
    tree = ast.parse(path.read_text(), str(path))
    relative = path.relative_to(PROJECT / "serving").as_posix()
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        for name in names:
            if name in FORBIDDEN_MODULES or (name == "subprocess"
                                             and relative not in SUBPROCESS_ALLOWED):
                found.append(f"{relative}:{node.lineno} imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and \
            isinstance(func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if isinstance(func, ast.Name) and called in FORBIDDEN_CALLS:
            found.append(f"{relative}:{node.lineno} calls {called}")
        if owner == "yaml" and called in ("load", "unsafe_load", "full_load"):
            loader = keywords.get("Loader")
            if called != "load" or not (isinstance(loader, ast.Attribute)
                                        and loader.attr in ("SafeLoader", "CSafeLoader")):
                found.append(f"{relative}:{node.lineno} yaml.{called} without SafeLoader")
        if owner in ("np", "numpy") and called == "load":
            allow = keywords.get("allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value:
                found.append(f"{relative}:{node.lineno} numpy.load(allow_pickle=True)")
        if owner == "torch" and called == "load":
            found.append(f"{relative}:{node.lineno} torch.load")
    return found


def test_no_pickle_or_eval_on_the_request_path() -> None:
    files = request_path_files()
    assert len(files) > 20
    assert [f for path in files for f in findings(path)] == []


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    planted = PROJECT / "serving" / "gateway" / "_planted_for_scan.py"
    assert not planted.exists()
    source = ("import pickle\nimport subprocess\nimport yaml\nimport numpy as np\n"
              "x = eval('1')\nyaml.load('a')\nyaml.load('a', Loader=yaml.Loader)\n"
              "np.load('f', allow_pickle=True)\n")
    planted.write_text(source)
    try:
        assert len(findings(planted)) == 6
    finally:
        planted.unlink()
