"""The dev issuer's RBAC configuration: a TOML file -> one frozen, validated ``IssuerConfig``.

The shape follows Logto's console: API resources (indicator, scopes, token TTL), roles
granting scopes of resources, and machine-to-machine apps (id, secret, roles)::

    default_resource = "https://shopping.api"

    [[resources]]
    indicator = "https://shopping.api"
    scopes = ["read:products", "write:products"]
    ttl = 3600

    [roles.shopping-reader]
    permissions = { "https://shopping.api" = ["read:products"] }

    [[apps]]
    id = "stats-service"
    secret = "dev-only-secret"
    roles = ["shopping-reader"]
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..fetch import is_loopback

__all__ = ["App", "IssuerConfig", "Resource", "Role", "load_config", "parse_config"]

# tomllib is 3.11+; tomli is the same parser for 3.10.
_toml: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

DEFAULT_TTL = 3600
MAX_TTL = 7 * 86400
# scope-token (RFC 6749 section 3.3): printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True)
class Resource:
    """An API resource: its indicator (the token's ``aud``), its scopes and token TTL."""

    indicator: str
    scopes: tuple[str, ...]
    ttl: int = DEFAULT_TTL
    name: str = ""


@dataclass(frozen=True)
class Role:
    """A named set of permissions: resource indicator -> the scopes granted on it."""

    name: str
    permissions: Mapping[str, frozenset[str]]
    description: str = ""


@dataclass(frozen=True)
class App:
    """A machine-to-machine application (OAuth client)."""

    id: str
    secret: str = field(repr=False)
    roles: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class IssuerConfig:
    """Resources, roles and apps, checked for consistency on construction."""

    resources: tuple[Resource, ...]
    roles: tuple[Role, ...] = ()
    apps: tuple[App, ...] = ()
    default_resource: str | None = None
    source: str = field(default="<config>", compare=False)
    _resources: dict[str, Resource] = field(init=False, repr=False, compare=False)
    _roles: dict[str, Role] = field(init=False, repr=False, compare=False)
    _apps: dict[str, App] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        object.__setattr__(self, "_resources", _index(self.resources, "indicator", src))
        object.__setattr__(self, "_roles", _index(self.roles, "name", src))
        object.__setattr__(self, "_apps", _index(self.apps, "id", src))
        if not self.resources:
            raise ConfigurationError(f"{src}: define at least one [[resources]] entry")
        for resource in self.resources:
            where = f"{src}: resource {resource.indicator!r}"
            _check_indicator(resource.indicator, where)
            _check_scopes(resource.scopes, where)
            if isinstance(resource.ttl, bool) or not isinstance(resource.ttl, int):
                raise ConfigurationError(f"{where}: ttl must be an integer number of seconds")
            if not 1 <= resource.ttl <= MAX_TTL:
                raise ConfigurationError(f"{where}: ttl must be between 1 and {MAX_TTL} seconds")
        for role in self.roles:
            for indicator, scopes in role.permissions.items():
                known = self._resources.get(indicator)
                where = f"{src}: role {role.name!r}"
                if known is None:
                    defined = _names(self._resources)
                    raise ConfigurationError(
                        f"{where}: unknown resource {indicator!r} (defined: {defined})"
                    )
                undefined = sorted(set(scopes) - set(known.scopes))
                if undefined:
                    raise ConfigurationError(
                        f"{where}: scopes {undefined} are not defined on {indicator!r} "
                        f"(it has: {' '.join(known.scopes) or 'none'})"
                    )
        for app in self.apps:
            where = f"{src}: app {app.id!r}"
            if not app.id or not isinstance(app.secret, str) or not app.secret:
                raise ConfigurationError(f"{where}: id and secret must be non-empty strings")
            for role_name in app.roles:
                if role_name not in self._roles:
                    raise ConfigurationError(
                        f"{where}: unknown role {role_name!r} (defined: {_names(self._roles)})"
                    )
        if self.default_resource is not None and self.default_resource not in self._resources:
            raise ConfigurationError(
                f"{src}: default_resource {self.default_resource!r} is not a defined resource"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<config>") -> IssuerConfig:
        """Build from parsed TOML (or any mapping of the same shape)."""
        _only(data, {"default_resource", "resources", "roles", "apps"}, source)
        resources = [
            _resource(entry, f"{source}: resources[{i}]")
            for i, entry in enumerate(_list(data.get("resources", []), f"{source}: resources"))
        ]
        roles_table = data.get("roles", {})
        if not isinstance(roles_table, Mapping):
            raise ConfigurationError(f"{source}: roles must be a table of [roles.<name>]")
        roles = [
            _role(name, entry, f"{source}: roles.{name}") for name, entry in roles_table.items()
        ]
        apps = [
            _app(entry, f"{source}: apps[{i}]")
            for i, entry in enumerate(_list(data.get("apps", []), f"{source}: apps"))
        ]
        default = data.get("default_resource")
        if default is not None and not isinstance(default, str):
            raise ConfigurationError(f"{source}: default_resource must be a string")
        return cls(tuple(resources), tuple(roles), tuple(apps), default, source)

    def resource(self, indicator: str) -> Resource | None:
        return self._resources.get(indicator)

    def app(self, client_id: str) -> App | None:
        return self._apps.get(client_id)

    def granted_scopes(self, app: App, resource: Resource) -> frozenset[str]:
        """Every scope of ``resource`` that ``app``'s roles grant."""
        granted: set[str] = set()
        for role_name in app.roles:
            granted.update(self._roles[role_name].permissions.get(resource.indicator, ()))
        return frozenset(granted)


def parse_config(text: str, source: str = "<config>") -> IssuerConfig:
    """Parse TOML text into an ``IssuerConfig``; errors name ``source`` and the entry."""
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from None
    return IssuerConfig.from_mapping(data, source)


def load_config(path: str | os.PathLike[str] | None = None) -> IssuerConfig:
    """Load a TOML config file; ``None`` loads the built-in default (= examples/issuer.toml)."""
    if path is None:
        text = (
            package_files.files("bearerguard.devissuer").joinpath("default.toml").read_text("utf-8")
        )
        return parse_config(text, "<built-in default config>")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(
            f"{os.fspath(path)}: cannot read the config file: {reason}"
        ) from None
    return parse_config(text, os.fspath(path))


# -- validation helpers ---------------------------------------------------------------------------


def _names(table: Mapping[str, Any]) -> str:
    return ", ".join(table) or "none"


def _index(items: Iterable[Any], key: str, source: str) -> dict[str, Any]:
    index: dict[str, Any] = {}
    for item in items:
        name = getattr(item, key)
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{source}: every {key} must be a non-empty string")
        if name in index:
            raise ConfigurationError(f"{source}: {key} {name!r} is defined twice")
        index[name] = item
    return index


def _check_indicator(indicator: str, where: str) -> None:
    # RFC 8707 section 2: an absolute URI without a fragment.
    parts = urlsplit(indicator)
    if not parts.scheme or not (parts.netloc or parts.path) or "#" in indicator:
        raise ConfigurationError(f"{where}: the indicator must be an absolute URI without fragment")
    # An MCP server's indicator is its own URL; plain http only on loopback (development).
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname):
        raise ConfigurationError(
            f"{where}: an http:// indicator must be on loopback (127.0.0.1, localhost, ::1); "
            "use https:// for anything else"
        )


def _check_scopes(scopes: Iterable[str], where: str) -> None:
    seen: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ConfigurationError(f"{where}: {scope!r} is not a valid scope name")
        if scope in seen:
            raise ConfigurationError(f"{where}: scope {scope!r} is listed twice")
        seen.add(scope)


def _only(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _table(entry: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"{where}: must be a table")
    return entry


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigurationError(f"{where}: must be an array")
    return value


def _string(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ConfigurationError(f"{where}: {key} must be a non-empty string")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    if not all(isinstance(v, str) and v for v in items):
        raise ConfigurationError(f"{where}: must be an array of non-empty strings")
    return tuple(items)


def _resource(entry: Any, where: str) -> Resource:
    table = _table(entry, where)
    _only(table, {"indicator", "name", "scopes", "ttl"}, where)
    return Resource(
        indicator=_string(table, "indicator", where),
        scopes=_strings(table.get("scopes", []), f"{where}.scopes"),
        ttl=table.get("ttl", DEFAULT_TTL),
        name=_string(table, "name", where, default=""),
    )


def _role(name: str, entry: Any, where: str) -> Role:
    table = _table(entry, where)
    _only(table, {"description", "permissions"}, where)
    permissions = _table(table.get("permissions", {}), f"{where}.permissions")
    return Role(
        name=name,
        permissions=MappingProxyType(
            {
                indicator: frozenset(_strings(scopes, f"{where}.permissions.{indicator!r}"))
                for indicator, scopes in permissions.items()
            }
        ),
        description=_string(table, "description", where, default=""),
    )


def _app(entry: Any, where: str) -> App:
    table = _table(entry, where)
    _only(table, {"id", "secret", "name", "roles"}, where)
    return App(
        id=_string(table, "id", where),
        secret=_string(table, "secret", where),
        roles=_strings(table.get("roles", []), f"{where}.roles"),
        name=_string(table, "name", where, default=""),
    )
