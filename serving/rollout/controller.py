"""The rollout controller: which versions are served, and changing that without a restart.

It keeps the set of wanted versions and the current :class:`Generation`. Reloading the
repository (admin endpoint or SIGHUP) resets the wanted set to what each model's
``version_policy`` selects on disk; loading or unloading one version edits it. Every change
builds a whole new generation first (a bad model fails the change and the old generation
keeps serving), switches to it, then drains and closes the old one. Changes run one at a
time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path

from serving.backends.base import BackendFactory
from serving.errors import Conflict, NotFound, RankServeError
from serving.repository.config import CONFIG_FILE
from serving.repository.served import load_model, model_versions, policy_selection
from serving.rollout.generation import Generation
from serving.rollout.routing import split_drift
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Rollout:
    """Owns the served versions (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics, factory: BackendFactory) -> None:
        self.settings = settings
        self.metrics = metrics
        self._factory = factory
        self.current: Generation | None = None
        self._wanted: dict[str, set[int]] = {}
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def repository(self) -> Path:
        return self.settings.model_repository

    def model_dir(self, name: str) -> Path:
        """A model's directory, only for names of model directories in the repository
        (never a path built from arbitrary input).

        Raises:
            NotFound: not a model of the repository.
        """
        if MODEL_NAME.fullmatch(name) and (self.repository / name / CONFIG_FILE).is_file():
            return self.repository / name
        raise NotFound(f"no model '{name}' in the repository", field="model")

    def _policy_wanted(self) -> dict[str, set[int]]:
        return {name: set(versions)
                for name, versions in policy_selection(self.repository).items()}

    async def start(self) -> Generation:
        """Serve what the repository's version policies select."""
        async with self._lock:
            return await self._switch("start", self._policy_wanted)

    async def reload(self) -> Generation:
        """Re-read the repository from disk; explicit loads and unloads are forgotten.

        Raises:
            ModelCardError, NotFound: the repository or a model is invalid (nothing changes).
        """
        async with self._lock:
            return await self._switch("reload", self._policy_wanted)

    def reload_in_background(self) -> None:
        """Start :meth:`reload` and return (the SIGHUP handler); the outcome is logged."""
        task = asyncio.get_running_loop().create_task(self._logged_reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _logged_reload(self) -> None:
        try:
            await self.reload()
        except RankServeError as e:
            log.error("reload failed, previous versions keep serving: %s", e.message)

    async def load(self, name: str, version: int) -> Generation:
        """Serve ``version`` of ``name`` too (reloading it from disk if already served).

        Raises:
            NotFound: no such model or version on disk.
            ModelCardError: the version is invalid (nothing changes).
        """
        def wanted() -> dict[str, set[int]]:
            _, on_disk = model_versions(self.model_dir(name))
            if version not in on_disk:
                raise NotFound(f"model '{name}' has no version {version} on disk "
                               f"(have {on_disk})", field="version")
            out = {n: set(v) for n, v in self._wanted.items()}
            out.setdefault(name, set()).add(version)
            return out

        async with self._lock:
            return await self._switch("load", wanted)

    async def unload(self, name: str, version: int) -> Generation:
        """Stop serving ``version`` of ``name``; its in-flight requests finish first.

        Raises:
            NotFound: the version is not served.
            Conflict: it is the model's last served version.
        """
        def wanted() -> dict[str, set[int]]:
            self.model_dir(name)
            served = self._wanted.get(name, set())
            if version not in served:
                raise NotFound(f"model '{name}' version {version} is not loaded",
                               field="version")
            if served == {version}:
                raise Conflict(f"version {version} is the last one of '{name}'; load "
                               f"another first", field="version")
            out = {n: set(v) for n, v in self._wanted.items()}
            out[name].discard(version)
            return out

        async with self._lock:
            return await self._switch("unload", wanted)

    async def _switch(self, action: str, plan: Callable[[], dict[str, set[int]]]
                      ) -> Generation:
        try:
            wanted = plan()
            models = [load_model(self.model_dir(name), version)
                      for name in sorted(wanted) for version in sorted(wanted[name])]
            new = await Generation.open(self.settings, self.metrics, self._factory, models)
        except BaseException:
            self.metrics.model_changes.labels(action, "failed").inc()
            raise
        self.metrics.model_changes.labels(action, "ok").inc()
        old, self.current, self._wanted = self.current, new, wanted
        log.info("serving %s", {n: sorted(v) for n, v in sorted(wanted.items())})
        self._warn_split_drift(new)
        if old is not None:
            # Shielded: a caller that goes away (an admin client hanging up) must not leave
            # the old generation open; shutdown waits for this drain.
            drain = asyncio.get_running_loop().create_task(
                old.drain_and_close(self.settings.max_budget_ms / 1e3))
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
            await asyncio.shield(drain)
        return new

    def _warn_split_drift(self, generation: Generation) -> None:
        """A WARNING for each configured split that the versions now served cannot honour
        (checked at start and on every reload, load and unload)."""
        for name, shares in sorted(self.settings.rollout.items()):
            drift = split_drift(name, shares, generation.versions(name))
            if drift is not None:
                log.warning(drift, extra={"model": name})

    async def aclose(self) -> None:
        """Close the current generation (the data plane's shutdown drain)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*self._draining, return_exceptions=True)
        async with self._lock:
            if self.current is not None:
                current, self.current = self.current, None
                await current.drain_and_close(0.0)

    def describe(self) -> list[dict[str, object]]:
        """What ``GET /admin/models`` shows: per model, versions on disk and served, the
        default version, the split in force and the shadow version."""
        out: list[dict[str, object]] = []
        current = self.current
        for name in sorted(self._wanted):
            on_disk: list[int] = []
            try:
                _, on_disk = model_versions(self.model_dir(name))
            except RankServeError:  # removed from disk since it was loaded
                on_disk = []
            split = current.splits.get(name) if current else None
            default = current.default.get(name) if current else None
            out.append({
                "name": name,
                "loaded": current.versions(name) if current else [],
                "on_disk": on_disk,
                "default": default.model.version if default else None,
                "split": {str(v): s for v, s in split.shares().items()} if split else {},
                "shadow": self.settings.shadow.get(name),
            })
        return out
