"""Signing keys for the dev issuer, persisted in a JSON file (mode 0600) so restarts keep the kid.

Rotation works as Logto's does: a new key becomes current and the previous ones stay in the
JWKS (at most ``MAX_KEYS``), so tokens they signed keep verifying. A running issuer notices
when another process (``bearerguard dev-issuer rotate-key``) rewrites the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import ConfigurationError
from ..signing import SigningKey, public_jwk, thumbprint

__all__ = ["ALGORITHMS", "MAX_KEYS", "KeyStore"]

ALGORITHMS = ("ES384", "RS256", "ES256", "ES512")
MAX_KEYS = 3  # Logto publishes Current, Next and Previous at most
_FORMAT = "bearerguard-dev-issuer-keys/1"
_NOTE = "Development only: private signing keys of the bearerguard dev issuer."
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _check_alg(alg: str) -> str:
    if alg not in ALGORITHMS:
        raise ConfigurationError(f"unsupported signing algorithm {alg!r}: use one of {ALGORITHMS}")
    return alg


def _from_pem(alg: str, pem: str) -> SigningKey:
    """A SigningKey (kid = RFC 7638 thumbprint) from a PKCS#8 PEM private key."""
    private = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        fits = _CURVE_ALG.get(private.curve.name) == alg
    else:
        fits = isinstance(private, rsa.RSAPrivateKey) and alg.startswith("RS")
    if not fits:
        raise ValueError(f"the key does not fit {alg}")
    assert isinstance(private, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    jwk = public_jwk(private)
    kid = thumbprint(jwk)
    jwk.update({"kid": kid, "use": "sig"})
    if not alg.startswith("RS"):  # as Logto: RSA JWKs carry no alg
        jwk["alg"] = alg
    return SigningKey(alg, private, kid, jwk)


def _to_pem(key: SigningKey) -> str:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _link(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` unless ``target`` exists (FileExistsError then)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: accept the tiny race
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(source, target)


class KeyStore:
    """The issuer's signing keys, oldest first; the last one signs.

    With ``path`` None the keys live in memory only. Otherwise the file is read, or created
    with one fresh ``alg`` key; ``alg`` does not change an existing file (``rotate`` does).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, alg: str = "ES384") -> None:
        self.path = Path(path) if path is not None else None
        self.alg = _check_alg(alg)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[SigningKey] = []
        if self.path is None:
            self._keys = [SigningKey.generate(alg)]
        elif not self._reload():
            self._create()

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """The published keys, oldest first (re-read when the file changed)."""
        if self.path is not None:
            with self._lock:
                self._reload()
        return tuple(self._keys)

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        return {"keys": [dict(k.jwk) for k in self.keys]}

    def rotate(self, alg: str | None = None) -> SigningKey:
        """Add a new current key (``alg``, else the current key's); keep at most MAX_KEYS."""
        with self._lock:
            if self.path is not None:
                self._reload()
            key = SigningKey.generate(_check_alg(alg or self._keys[-1].alg))
            keys = [*self._keys, key][-MAX_KEYS:]
            if self.path is not None:
                self._write(keys, replace=True)
            self._keys = keys
            return key

    # -- the file ---------------------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self) -> bool:
        """Read the file when it changed; False when there is no file."""
        stamp = self._file_stamp()
        if stamp is None:
            return False  # deleted while running: keep serving the keys in memory
        if stamp == self._stamp:
            return True
        self._keys = self._read()
        self._stamp = stamp
        return True

    def _read(self) -> list[SigningKey]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text("utf-8"))
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f"format is not {_FORMAT!r}")
            entries = data.get("keys")
            if not isinstance(entries, list) or not entries:
                raise ValueError("no keys")
            return [_from_pem(entry["alg"], entry["private_key"]) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"{self.path}: not a usable dev issuer key file ({exc}); "
                "delete it to start with new keys"
            ) from None

    def _create(self) -> None:
        keys = [SigningKey.generate(self.alg)]
        try:
            self._write(keys, replace=False)
        except FileExistsError:  # another process created it first: use its keys
            self._reload()
            return
        self._keys = keys
        self._stamp = self._file_stamp()

    def _write(self, keys: list[SigningKey], *, replace: bool) -> None:
        assert self.path is not None
        document = {
            "format": _FORMAT,
            "note": _NOTE,
            "keys": [{"alg": k.alg, "kid": k.kid, "private_key": _to_pem(k)} for k in keys],
        }
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            temp = directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    json.dump(document, file, indent=2)
                    file.write("\n")
                    file.flush()
                    os.fsync(file.fileno())
                if replace:
                    os.replace(temp, self.path)
                else:
                    _link(temp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
        except FileExistsError:
            raise
        except OSError as exc:
            raise ConfigurationError(f"{self.path}: cannot write the key file: {exc}") from None
        if replace:
            self._stamp = self._file_stamp()
