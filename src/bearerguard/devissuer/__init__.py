"""An embedded, Logto-shaped OAuth 2.0 issuer for development: ``bearerguard dev-issuer``.

In a test or script::

    issuer = DevIssuer(load_config("examples/issuer.toml"))
    with issuer.serve() as url:  # http://127.0.0.1:<free port>/oidc
        ...

For development only: its client secrets live in a config file and its keys in a plain file.
"""

from .app import DEFAULT_ISSUER, DevIssuer, create_app
from .config import App, IssuerConfig, Resource, Role, load_config, parse_config
from .grant import OAuthError
from .keystore import KeyStore

__all__ = [
    "DEFAULT_ISSUER",
    "App",
    "DevIssuer",
    "IssuerConfig",
    "KeyStore",
    "OAuthError",
    "Resource",
    "Role",
    "create_app",
    "load_config",
    "parse_config",
]
