"""Page tokens: the one scheme every paged call uses.

A token carries the position of the next page and a fingerprint of the query it belongs
to, signed with HMAC-SHA256, so that a service accepts only tokens it issued itself for
the same query: a forged, altered or truncated token, or one of another query, is
refused with a message saying which. Tokens are opaque to clients.

The key is random per process unless one is configured; replicas behind one address
(and pages that must survive a restart) need the same configured key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Annotated

from pydantic import AfterValidator, SecretStr

SIGNATURE_BYTES = 16
MIN_KEY_LENGTH = 16
MAX_OFFSET = 2**31 - 1


def _long_enough(key: SecretStr | None) -> SecretStr | None:
    if key is not None and len(key.get_secret_value()) < MIN_KEY_LENGTH:
        raise ValueError(f"a page token key must be at least {MIN_KEY_LENGTH} characters")
    return key


# The type of a service's ``page_token_key`` setting: a secret of at least MIN_KEY_LENGTH
# characters, or None for a random key per process.
PageTokenKey = Annotated[SecretStr | None, AfterValidator(_long_enough)]


def key_bytes(key: SecretStr | None) -> bytes | None:
    """A ``PageTokenKey`` setting as the key ``PageTokens`` takes."""
    return None if key is None else key.get_secret_value().encode()


class InvalidPageToken(ValueError):
    """A page token this service did not issue, or issued for another query."""


def query_fingerprint(*parts: object) -> str:
    """A short stable digest of what defines a query (JSON-serialisable parts)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PageTokens:
    """Issues and reads the page tokens of one kind of listing (``kind`` names it in messages)."""

    def __init__(self, kind: str, key: bytes | None = None) -> None:
        self.kind = kind
        self._key = key or secrets.token_bytes(32)

    def issue(self, position: str | int, query: str) -> str:
        body = json.dumps({"k": self.kind, "p": position, "q": query}, separators=(",", ":")).encode()
        signature = hmac.new(self._key, body, hashlib.sha256).digest()[:SIGNATURE_BYTES]
        return base64.urlsafe_b64encode(signature + body).decode().rstrip("=")

    def read(self, token: str, query: str) -> str | int:
        """The position ``token`` holds; raises ``InvalidPageToken`` unless this object's key
        signed it for ``query``. Whatever ``token`` is, nothing else is raised."""
        not_ours = InvalidPageToken(f"page_token is not one {self.kind} issued")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise not_ours from None
        signature, body = raw[:SIGNATURE_BYTES], raw[SIGNATURE_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:SIGNATURE_BYTES]
        if len(signature) != SIGNATURE_BYTES or not hmac.compare_digest(signature, expected):
            raise not_ours
        try:
            data = json.loads(body)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError included
            raise not_ours from None
        if not isinstance(data, dict) or data.get("k") != self.kind or not isinstance(data.get("p"), str | int):
            raise not_ours
        if data.get("q") != query:
            raise InvalidPageToken(f"page_token belongs to another {self.kind} query")
        return data["p"]

    def read_offset(self, token: str, query: str) -> int:
        """``read`` for tokens that hold a list offset; an empty token is offset 0."""
        if not token:
            return 0
        offset = self.read(token, query)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
            raise InvalidPageToken(f"page_token is not one {self.kind} issued")
        return offset
