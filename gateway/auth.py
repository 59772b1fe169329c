"""API keys: who is calling, and for which tenant.

A key is a random token given to one tenant's app. The gateway keeps only its
SHA-256 (a key has 256 random bits, so a plain hash cannot be reversed by guessing),
in lines of the form::

    <tenant> <sha256 hex of the key> [read|write]

``write`` (the default) may call everything; ``read`` may only look (the calls
docs/gateway.md lists; each RPC names its scope in gateway/service.py). Callers send
``authorization: Bearer <key>``.

The keys file is read again when it changes (its modification time, size or inode,
checked at most every ``reload_s`` by the calls) and on SIGHUP: a key added or revoked
takes effect without a restart. A file that cannot be read or parsed leaves the keys
as they were (and is logged), so a typo does not lock every caller out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
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
log = logging.getLogger(__name__)


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
    """The hashed keys the gateway accepts: of a file (read again when it changes) and inline."""

    def __init__(
        self, callers: dict[str, Caller], path: Path | None = None, inline: str = "", reload_s: float = 1.0
    ) -> None:
        self._callers = dict(callers)
        self.path = path
        self._inline = inline
        self.reload_s = reload_s
        self._stamp = _stamp(path) if path is not None else None
        self._checked_at = time.monotonic()

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
    def load(cls, path: Path | None, inline: str = "", reload_s: float = 1.0) -> ApiKeys:
        return cls(_read_callers(path, inline), path, inline, reload_s)

    def reload(self) -> bool:
        """Reads the keys file again; False (the keys unchanged, the error logged) when it cannot be used."""
        if self.path is None:
            return True
        stamp = _stamp(self.path)
        try:
            callers = _read_callers(self.path, self._inline)
        except KeyFileError as error:
            log.error("API keys not reloaded, the previous keys stay in use: %s", error)
            self._stamp = stamp  # logged once per change of the file
            return False
        self._callers, self._stamp = callers, stamp
        log.info("API keys reloaded from %s: %d keys", self.path, len(callers))
        return True

    def refresh(self) -> None:
        """Reloads the keys file if it changed since it was read (checked at most every ``reload_s``)."""
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked_at < self.reload_s:
            return
        self._checked_at = now
        if _stamp(self.path) != self._stamp:
            self.reload()

    def __len__(self) -> int:
        return len(self._callers)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        self.refresh()
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


def _read_callers(path: Path | None, inline: str) -> dict[str, Caller]:
    callers: dict[str, Caller] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise KeyFileError(f"API keys file {path}: {error.strerror or error}") from None
        callers.update(ApiKeys.parse(text.splitlines(), str(path))._callers)
    if inline:
        callers.update(ApiKeys.parse(re.split(r"[;\n]", inline), "api_keys")._callers)
    return callers


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file changed: its modification time, size and inode (None: missing)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


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
