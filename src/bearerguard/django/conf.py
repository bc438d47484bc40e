"""The ``BEARERGUARD`` setting: validated, and turned into one ``ResourceServer``."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..rules import Rule, RuleSet
from ..server import ResourceServer

__all__ = ["Settings", "declare_scopes", "get_server", "server_from_settings", "settings_of"]

SETTING = "BEARERGUARD"
# Keys that are the middleware's, not the ResourceServer's.
_OWN = {"PROTECT_ALL", "PUBLIC", "RULES", "SERVER"}
_SERVER_ARGS = {
    name.upper(): name
    for name in inspect.signature(ResourceServer.__init__).parameters
    if name not in ("self", "issuer", "audience", "clock")
}


@dataclass(frozen=True)
class Settings:
    """``BEARERGUARD``, checked: the server and what the middleware does."""

    server: ResourceServer
    protect_all: bool
    rules: RuleSet


def server_from_settings(config: Mapping[str, Any]) -> ResourceServer:
    """A ``ResourceServer`` from a ``BEARERGUARD`` dict: ``ISSUER`` and ``AUDIENCE``, and any
    other argument uppercased; an unknown key is a ``ConfigurationError`` (a typo would
    otherwise silently weaken the configuration)."""
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"{SETTING} must be a dict")
    unknown = sorted(set(config) - set(_SERVER_ARGS) - _OWN - {"ISSUER", "AUDIENCE"})
    if unknown:
        raise ConfigurationError(f"unknown {SETTING} keys: {', '.join(map(str, unknown))}")
    missing = [key for key in ("ISSUER", "AUDIENCE") if not config.get(key)]
    if missing:
        raise ConfigurationError(f"{SETTING} needs {' and '.join(missing)}")
    kwargs = {_SERVER_ARGS[k]: v for k, v in config.items() if k in _SERVER_ARGS}
    return ResourceServer(config["ISSUER"], config["AUDIENCE"], **kwargs)


def settings_of(config: Mapping[str, Any]) -> Settings:
    ready = config.get("SERVER") if isinstance(config, Mapping) else None
    if ready is not None:  # a ResourceServer built by the app (or a test) itself
        if not isinstance(ready, ResourceServer):
            raise ConfigurationError(f"{SETTING}['SERVER'] must be a ResourceServer")
        extra = sorted(set(config) - _OWN)
        if extra:
            raise ConfigurationError(f"{SETTING} with SERVER takes no {', '.join(extra)}")
        server = ready
    else:
        server = server_from_settings(config)
    public = config.get("PUBLIC", ())
    rules = config.get("RULES", ())
    if isinstance(public, str) or not all(isinstance(p, str) for p in public):
        raise ConfigurationError(f"{SETTING}['PUBLIC'] is a list of path patterns")
    if not all(isinstance(rule, Rule) for rule in rules):
        raise ConfigurationError(f"{SETTING}['RULES'] is a list of bearerguard.rules.Rule")
    protect_all = config.get("PROTECT_ALL", True)
    if not isinstance(protect_all, bool):
        raise ConfigurationError(f"{SETTING}['PROTECT_ALL'] is True or False")
    ruleset = RuleSet(rules, public)
    server.check_requirements(rule.requirement for rule in ruleset.rules)
    server.declare_scopes(s for rule in ruleset.rules for s in rule.requirement.scopes)
    server.declare_scopes(_declared)
    return Settings(server, protect_all, ruleset)


_lock = threading.Lock()
_built: dict[int, tuple[object, Settings]] = {}
# Scopes views declare at import time (permission classes), before the server may exist.
_declared: dict[str, None] = {}


def declare_scopes(scopes: Any) -> None:
    """Scopes the site's views use, for RFC 9728 ``scopes_supported``; safe at import time
    (a bad ``BEARERGUARD`` is then reported by ``manage.py check``, not by an import)."""
    with _lock:
        for scope in scopes:
            _declared.setdefault(scope, None)
        for _, built in _built.values():
            built.server.declare_scopes(_declared)


def current() -> Settings:
    """The settings' one ``Settings`` (built once per ``BEARERGUARD`` object; tests that
    override the setting get a new one)."""
    from django.conf import settings

    config = getattr(settings, SETTING, None)
    if config is None:
        raise ConfigurationError(f"set {SETTING} in settings.py (see bearerguard.django)")
    with _lock:
        found = _built.get(id(config))
        if found is None or found[0] is not config:
            found = (config, settings_of(config))
            _built.clear()
            _built[id(config)] = found
        return found[1]


def get_server() -> ResourceServer:
    """The ``ResourceServer`` the ``BEARERGUARD`` setting describes."""
    return current().server
