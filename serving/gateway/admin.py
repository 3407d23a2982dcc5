"""``/admin``: load, unload and reload model versions without a restart.

Off by default: the routes exist only with ``admin_enabled`` (otherwise ``/admin/...`` is
an unknown path, 404). They require ``Authorization: Bearer <admin_token>``, a secret of its
own (traffic credentials must not be able to change what is served), compared in constant
time. Every change builds the new versions fully before traffic moves to them and drains
the old ones (see :mod:`serving.rollout.controller`), so no request is lost.

* ``GET /admin/models``: per model, versions on disk and loaded, default, split, shadow.
* ``POST /admin/models/{model}/load`` with ``{"version": 2}``: serve that version too.
* ``POST /admin/models/{model}/unload`` with ``{"version": 1}``: stop serving it.
* ``POST /admin/reload``: re-read the repository (each model's ``version_policy``).
"""

from __future__ import annotations

from aiohttp import web

from serving.errors import Forbidden
from serving.gateway.keys import DATA_PLANE, SETTINGS
from serving.gateway.rules import check_bearer, parse_json, read_body, version_of
from serving.rollout.controller import Rollout

PREFIX = "/admin"


def add_routes(app: web.Application) -> None:
    """Register the admin routes when the settings enable them."""
    if not app[SETTINGS].admin_enabled:
        return
    app.router.add_get(f"{PREFIX}/models", list_models)
    app.router.add_post(f"{PREFIX}/models/{{model}}/load", load)
    app.router.add_post(f"{PREFIX}/models/{{model}}/unload", unload)
    app.router.add_post(f"{PREFIX}/reload", reload)


def _authorize(request: web.Request) -> Rollout:
    """The rollout controller, for a request bearing the admin token.

    Raises:
        Unauthorized: no bearer token.
        Forbidden: the wrong one.
    """
    token = request.app[SETTINGS].admin_token
    if not token:  # the settings refuse admin_enabled without one; never compare to ""
        raise Forbidden("the admin endpoints have no token configured", field="Authorization")
    check_bearer(request, token, Forbidden)
    return request.app[DATA_PLANE].rollout


async def _version(request: web.Request) -> int:
    """The ``version`` of a load/unload body.

    Raises:
        BadRequest: not a JSON object with a positive integer ``version``.
    """
    return version_of(parse_json(await read_body(request)).get("version"), "version")


def _state(rollout: Rollout) -> web.Response:
    return web.json_response({"models": rollout.describe()})


async def list_models(request: web.Request) -> web.Response:
    return _state(_authorize(request))


async def load(request: web.Request) -> web.Response:
    rollout = _authorize(request)
    await rollout.load(request.match_info["model"], await _version(request))
    return _state(rollout)


async def unload(request: web.Request) -> web.Response:
    rollout = _authorize(request)
    await rollout.unload(request.match_info["model"], await _version(request))
    return _state(rollout)


async def reload(request: web.Request) -> web.Response:
    rollout = _authorize(request)
    await rollout.reload()
    return _state(rollout)
