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
import logging
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from serving.errors import RankServeError
from serving.gateway.app import create_app
from serving.gateway.keys import DATA_PLANE
from serving.settings import Settings
from serving.telemetry.logs import configure_logging

log = logging.getLogger("rankserve.serve")
SHUTDOWN_TIMEOUT_S = 10.0


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for a settings field's type."""
    args = typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(args)}
    if annotation in (int, float):
        return {"type": annotation}
    if typing.get_origin(annotation) is list:
        return {"type": str, "metavar": "A,B,..."}
    return {"type": str}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with settings (env: RANKSERVE_CONFIG).")
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        env = f"RANKSERVE_{name.upper()}"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help=f"{info.description} (default: {shown}; env: {env})",
                            **_flag_type(info.annotation))


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the parsed flags (see the module docstring for the priority).

    Raises:
        pydantic.ValidationError: a value has the wrong type or range.
    """
    overrides = {name: getattr(args, name) for name in Settings.model_fields}
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
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except RankServeError as e:
        log.error("cannot start: %s", e.message)
        return 1
    return 0


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then shut down in order."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses]
        log.info("listening on %s", ", ".join(addresses),
                 extra={"addresses": addresses, "backend": settings.backend,
                        "model_repository": str(settings.model_repository)})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP reloads the repository: new versions are loaded, then swapped in.
        loop.add_signal_handler(signal.SIGHUP, app[DATA_PLANE].rollout.reload_in_background)
        await stop.wait()
        app[DATA_PLANE].draining = True  # /readyz 503 from now on
        log.info("shutting down: not ready; closing the listener in %g s, then finishing "
                 "in-flight requests and draining the batchers", settings.shutdown_delay_s)
        await asyncio.sleep(settings.shutdown_delay_s)
    finally:
        await runner.cleanup()
