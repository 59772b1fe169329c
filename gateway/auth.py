"""API keys: who is calling, and for which tenant.

A key is a random token given to one tenant's app. The gateway keeps only its
SHA-256 (a key has 256 random bits, so a plain hash cannot be reversed by guessing),
in lines of the form::

    <tenant> <sha256 hex of the key> [read|write]

``write`` (the default) may call everything; ``read`` may only look (Verify,
Identify, FindMe, ListPeople, Stats). Callers send ``authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "fs_"
# The local tenant's key, made by `facesearch up` when no keys are configured.
LOCAL_TENANT = "local"
LOCAL_KEYS_FILE = Path("var/gateway/api_keys")
LOCAL_KEY_FILE = Path("var/gateway/local.key")
SCOPES = ("read", "write")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(ValueError):
    """A key line that cannot be used; the message says where and why."""


class AuthError(Exception):
    """The call is refused; ``permission`` tells PERMISSION_DENIED from UNAUTHENTICATED."""

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


@dataclass(frozen=True)
class Caller:
    tenant: str
    scope: str

    def require(self, scope: str) -> None:
        if scope == "write" and self.scope != "write":
            raise AuthError(f"this API key of tenant {self.tenant!r} may only read", permission=True)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_line(tenant: str, key: str, scope: str = "write") -> str:
    if not _TENANT.match(tenant):
        raise KeyFileError(f"tenant {tenant!r}: use letters, digits, '_', '.', '-' (at most 128)")
    if scope not in SCOPES:
        raise KeyFileError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return f"{tenant} {hash_key(key)} {scope}"


class ApiKeys:
    """The hashed keys the gateway accepts."""

    def __init__(self, callers: dict[str, Caller]) -> None:
        self._callers = dict(callers)

    @classmethod
    def parse(cls, lines: Iterable[str], source: str) -> ApiKeys:
        callers: dict[str, Caller] = {}
        for number, raw in enumerate(lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"{source} line {number}"
            if len(parts) not in (2, 3):
                raise KeyFileError(f"{where}: expected '<tenant> <sha256> [read|write]'")
            tenant, digest, scope = parts[0], parts[1].lower(), parts[2] if len(parts) == 3 else "write"
            if not _TENANT.match(tenant):
                raise KeyFileError(f"{where}: tenant {tenant!r} is not a valid tenant name")
            if not _HASH.match(digest):
                raise KeyFileError(f"{where}: the key must be given as its SHA-256 in hex (64 characters)")
            if scope not in SCOPES:
                raise KeyFileError(f"{where}: scope must be one of {', '.join(SCOPES)}")
            if digest in callers and callers[digest].tenant != tenant:
                raise KeyFileError(f"{where}: the same key is listed for two tenants")
            callers[digest] = Caller(tenant, scope)
        return cls(callers)

    @classmethod
    def load(cls, path: Path | None, inline: str = "") -> ApiKeys:
        callers: dict[str, Caller] = {}
        if path is not None:
            try:
                text = Path(path).read_text()
            except OSError as error:
                raise KeyFileError(f"API keys file {path}: {error.strerror or error}") from None
            callers.update(cls.parse(text.splitlines(), str(path))._callers)
        if inline:
            callers.update(cls.parse(re.split(r"[;\n]", inline), "api_keys")._callers)
        return cls(callers)

    def __len__(self) -> int:
        return len(self._callers)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        header = ""
        for name, value in metadata or ():
            if name.lower() == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        if not header:
            raise AuthError("missing 'authorization: Bearer <API key>' metadata")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("the authorization metadata must be 'Bearer <API key>'")
        # A lookup by digest: timing reveals nothing an attacker can steer, since
        # they cannot choose the digest of the key they send.
        caller = self._callers.get(hash_key(key.strip()))
        if caller is None:
            raise AuthError("unknown API key")
        return caller


def add_key(path: Path, tenant: str, scope: str = "write") -> str:
    """Makes a new key for ``tenant``, appends its hashed line to ``path`` and returns the
    key: the only time it is seen in the clear."""
    key = new_key()
    line = key_line(tenant, key, scope)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as file:
        file.write(line + "\n")
    return key
