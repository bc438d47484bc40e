"""bearerguard: protect HTTP APIs with OAuth 2.0 JWT access tokens."""

from .errors import (
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    IssuerUnavailable,
    MissingToken,
    Reason,
)
from .fetch import WarmUpError
from .server import ResourceServer
from .token import AccessToken, require_scopes
from .verify import DEFAULT_ALGORITHMS

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AccessToken",
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "IssuerUnavailable",
    "MissingToken",
    "Reason",
    "ResourceServer",
    "WarmUpError",
    "require_scopes",
]
__version__ = "0.1.0"
