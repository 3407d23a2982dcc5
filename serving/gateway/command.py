"""``rankserve serve``: run the gateway.

Every :class:`~serving.settings.Settings` field is a flag (``--batch-rows``), generated from
the model so ``--help`` always lists every setting with its default and description.
Priority: defaults < ``--config`` YAML < ``RANKSERVE_*`` environment < flags. SIGTERM and
SIGINT turn ``/readyz`` to 503, keep serving for ``shutdown_delay_s``, then stop taking
connections, finish in-flight requests, drain the batchers and close the backend
(aiohttp's runner order).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import typing
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from serving.errors import RankServeError
from serving.gateway.app import create_app
from serving.gateway.keys import DATA_PLANE, METRICS
from serving.gateway.workers import Supervisor, reload_requested_while_starting, worker_count
from serving.rpc.server import RpcServer
from serving.settings import Settings, masked, unknown_environment
from serving.telemetry.logs import configure_logging

log = logging.getLogger("rankserve.serve")
SHUTDOWN_TIMEOUT_S = 10.0


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for a settings field's type."""
    args = typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is typing.Literal:
        if all(isinstance(a, str) and a.isupper() for a in args):
            return {"choices": list(args), "type": str.upper}  # --log-level debug
        return {"choices": list(args)}
    if annotation in (int, float):
        return {"type": annotation}
    if typing.get_origin(annotation) is list:
        return {"type": str, "metavar": "A,B,..."}
    return {"type": str}


# --help groups: the first group whose prefix (or name) a setting matches; else "other".
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("server", ("host", "port", "grpc_", "model_repository", "default_model", "workers",
                "shutdown_delay_s", "log_", "max_connections", "header_timeout_s",
                "keepalive_timeout_s", "body_timeout_s")),
    ("backend (embedded ONNX Runtime)", ("backend", "providers", "require_providers",
                                         "intra_op_", "inter_op_", "graph_optimization",
                                         "instances", "cuda_", "tensorrt_", "io_binding",
                                         "provider_options")),
    ("Triton", ("triton_", "failover")),
    ("batching", ("default_budget_ms", "max_budget_ms", "batch_rows", "chunk_rows",
                  "max_wait_ms", "max_queue_rows", "batching")),
    ("limits", ("max_",)),
    ("security", ("auth_token", "admin_")),
    ("rollouts", ("rollout", "shadow", "shadow_")),
)


def _group_of(name: str) -> str:
    for group, prefixes in GROUPS:
        if any(name == p or (p.endswith("_") and name.startswith(p)) for p in prefixes):
            return group
    return "other"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [--config FILE] [--print-config] [--SETTING VALUE ...]"
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with settings (env: RANKSERVE_CONFIG).")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings (defaults < YAML < environment < "
                             "flags; secrets masked) as YAML and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for title, _ in (*GROUPS, ("other", ())):
        groups[title] = parser.add_argument_group(f"{title} settings")
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        env = f"RANKSERVE_{name.upper()}"
        kwargs = _flag_type(info.annotation)
        if name.endswith("_bytes"):
            kwargs = {"type": str, "metavar": "SIZE"}  # 32MiB, 64k, or bytes
        text = f"{info.description} (default: {shown}; env: {env})"
        if name in SECRET_FILES:
            text += f"; prefer --{name.replace('_', '-')}-file (a flag shows in `ps`)"
        groups[_group_of(name)].add_argument(f"--{name.replace('_', '-')}", dest=name,
                                             default=None, help=text, **kwargs)
    _configure_secret_files(groups["security"])


SECRET_FILES = ("auth_token", "admin_token")
"""Secrets also readable from a file (a mounted Kubernetes Secret), named by a flag or by
``RANKSERVE_<NAME>_FILE``."""


def _configure_secret_files(group: argparse._ArgumentGroup) -> None:
    for name in SECRET_FILES:
        flag = name.replace("_", "-")
        group.add_argument(f"--{flag}-file", dest=f"{name}_file", type=Path, default=None,
                           help=f"read {name} from this file (trailing newline dropped; env: "
                                f"RANKSERVE_{name.upper()}_FILE)")


def _secrets_from_files(args: argparse.Namespace) -> dict[str, str]:
    """Secrets named by ``--*-file`` flags or ``RANKSERVE_*_FILE`` variables.

    Raises:
        OSError: a named file cannot be read.
    """
    found = {}
    for name in SECRET_FILES:
        path = getattr(args, f"{name}_file", None) \
            or os.environ.get(f"RANKSERVE_{name.upper()}_FILE")
        if path:
            found[name] = Path(path).read_text().strip()
    return found


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the parsed flags (see the module docstring for the priority).

    Raises:
        pydantic.ValidationError: a value has the wrong type or range.
    """
    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    for name, secret in _secrets_from_files(args).items():
        overrides[name] = overrides[name] or secret  # an explicit flag still wins
    config = args.config
    if config is None and os.environ.get("RANKSERVE_CONFIG"):
        config = Path(os.environ["RANKSERVE_CONFIG"])
    return Settings.load(config, **overrides)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except (ValidationError, OSError) as e:
        print(f"rankserve serve: invalid settings: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(masked(settings), sort_keys=False), end="")
        return 0
    configure_logging(settings.log_level, settings.log_format)
    problem = port_problem(settings.host, settings.port)
    if problem is None and settings.grpc_enabled:
        problem = port_problem(settings.host, settings.grpc_port, "grpc_port")
    if problem is not None:
        print(f"rankserve serve: {problem}", file=sys.stderr)
        return 1
    log_effective_settings(settings)
    workers = worker_count(settings.workers)
    if workers > 1:
        return Supervisor(settings, workers).run()
    try:
        run_event_loop(serve(settings))
    except RankServeError as e:
        log.error("cannot start: %s", e.message)
        return 1
    return 0


def log_effective_settings(settings: Settings) -> None:
    """Warn about ``RANKSERVE_*`` variables that name no setting, then log the settings in
    force (secrets masked), so a log shows what a process really ran with."""
    for line in unknown_environment():
        log.warning(line)
    log.info("settings in force (defaults < YAML < environment < flags)",
             extra={"settings": masked(settings)})


def port_problem(host: str, port: int, setting: str = "port") -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not allowed), in one line naming the
    setting; None when it can. Checked before any model loads, so a port clash costs no
    start-up and prints no traceback. Port 0 (any free port) always can."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot listen on {host}: {e.strerror} (setting host: --host, RANKSERVE_HOST)"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            try:
                probe.bind(address)
            except OSError as e:
                reason = ("already in use" if e.errno == errno.EADDRINUSE
                          else e.strerror or str(e))
                flag = setting.replace("_", "-")
                return (f"cannot listen on {host}:{port}: {reason} (setting {setting}: "
                        f"--{flag}, RANKSERVE_{setting.upper()}; host: --host)")
    return None


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (Linux and macOS: every socket event and
    the per-batch hand-off from ONNX Runtime's worker thread cost less there), else on
    asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then shut down in order. ``reuse_port``: bind with
    SO_REUSEPORT, beside the other workers of a :class:`Supervisor`."""
    app = create_app(settings)
    fd_limit = raise_fd_limit()
    throttle_accept_errors(asyncio.get_running_loop())
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S, **connection_options(settings))
    await runner.setup()
    limit_connections(runner, connection_cap(settings.max_connections, fd_limit))
    rpc = RpcServer(app[DATA_PLANE], settings, app[METRICS]) if settings.grpc_enabled else None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True,
                           reuse_port=reuse_port or None)
        await site.start()
        addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses]
        grpc_address = None
        if rpc is not None:  # same data plane; stopped before it drains (finally below)
            await rpc.start(reuse_port)
            grpc_address = f"grpc://{rpc.address}"
        shown = addresses + ([grpc_address] if grpc_address else [])
        log.info("listening on %s", ", ".join(shown),
                 extra={"addresses": addresses, "grpc_address": grpc_address,
                        "backend": settings.backend,
                        "model_repository": str(settings.model_repository)})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP reloads the repository: new versions are loaded, then swapped in.
        loop.add_signal_handler(signal.SIGHUP, app[DATA_PLANE].rollout.reload_in_background)
        if reload_requested_while_starting():
            app[DATA_PLANE].rollout.reload_in_background()
        await stop.wait()
        app[DATA_PLANE].draining = True  # /readyz 503 from now on
        log.info("shutting down: not ready; closing the listener in %g s, then finishing "
                 "in-flight requests and draining the batchers", settings.shutdown_delay_s)
        await asyncio.sleep(settings.shutdown_delay_s)
    finally:
        if rpc is not None:  # in-flight calls finish while the batchers still run
            await rpc.stop(SHUTDOWN_TIMEOUT_S)
        await runner.cleanup()


# -- connections: timeouts, a cap, the file-descriptor limit --------------------------------

_REFUSED_BODY = (b'{"error":{"code":"unavailable","message":"too many open connections",'
                 b'"field":"connection"}}')
CONNECTION_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                      b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                      + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY)
"""The answer a connection past ``max_connections`` gets before it is closed (no request
is read from it, so there is no request id)."""


def connection_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server options from the settings: an idle connection, including one that
    never sends a request, is closed after ``keepalive_timeout_s`` (aiohttp's default is
    3,630 s)."""
    return {"keepalive_timeout": settings.keepalive_timeout_s}


def limit_connections(runner: web.BaseRunner, limit: int) -> None:
    """Close connections past ``limit`` open ones at once, with a 503, so that a flood of
    idle connections cannot use up the file descriptors every other client needs.

    Raises:
        RuntimeError: the runner is not set up.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("limit_connections needs a set-up runner")
    accept = server.connection_made
    refused = [0]

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        accept(handler, transport)
        if len(server.connections) > limit:
            refused[0] += 1
            if refused[0] & (refused[0] - 1) == 0:  # 1st, 2nd, 4th, ...: a bounded log
                log.warning("%d connection(s) refused: more than max_connections=%d open",
                            refused[0], limit)
            transport.write(CONNECTION_REFUSED)
            handler.force_close()
            transport.close()

    server.connection_made = connection_made  # type: ignore[method-assign]


FD_RESERVE = 64
"""File descriptors kept free of client connections: model files, logs, Triton's channel."""


def raise_fd_limit() -> int | None:
    """Raise the soft file-descriptor limit to the hard one (logged), so connections do
    not run out of descriptors long before ``max_connections``; the soft limit in force
    afterwards (None where unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s",
                        soft, hard, e)
        else:
            log.info("raised the file-descriptor limit from %d to %d", soft, hard,
                     extra={"fd_soft_limit": hard})
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, fd_limit: int | None) -> int:
    """``max_connections``, lowered (logged) to stay ``FD_RESERVE`` below the fd limit: past
    it, accepting fails inside asyncio, where no answer and no cap can help."""
    if fd_limit is None or max_connections <= fd_limit - FD_RESERVE:
        return max_connections
    cap = max(fd_limit - FD_RESERVE, 1)
    log.warning("max_connections=%d is past the file-descriptor limit %d: capping at %d",
                max_connections, fd_limit, cap)
    return cap


ACCEPT_ERROR = "socket.accept() out of system resource"
ACCEPT_LOG_INTERVAL_S = 1.0


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncio's accept errors (out of file descriptors) at most once a second, with a
    count, instead of once per failed accept (about 10,000 lines/s under an fd flood);
    every other loop error goes to the handler that was there."""
    previous = loop.get_exception_handler()
    state = {"next": 0.0, "count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(ACCEPT_ERROR):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        state["count"] += 1
        now = loop.time()
        if now >= state["next"]:
            log.error("%s: %d failed accept(s) since the last report: %s", ACCEPT_ERROR,
                      state["count"], context.get("exception"))
            state["next"], state["count"] = now + ACCEPT_LOG_INTERVAL_S, 0

    loop.set_exception_handler(handler)
