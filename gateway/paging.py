"""Paged answers (FindMe, ListPeople, ListPersonFaces, ClusterFaces): the page size asked
for, the position a signed page token holds, and one page of a ranking with the token of
the next."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from gateway.errors import invalid
from services.runtime.page_tokens import InvalidPageToken, PageTokens

Item = TypeVar("Item")


def page_size(value: int, default: int, limit: int, name: str = "page_size") -> int:
    """``value`` (``default`` when 0), INVALID_ARGUMENT unless it is in [1, ``limit``]."""
    size = value or default
    if not 1 <= size <= limit:
        raise invalid(f"{name} must be in [1, {limit}], got {size}")
    return size


def page_start(tokens: PageTokens, page_token: str, query: str) -> int:
    """Where the page ``page_token`` asks for starts (0 without one); INVALID_ARGUMENT for a
    token that is not one of ``tokens``' for this query."""
    try:
        return tokens.read_offset(page_token, query)
    except InvalidPageToken as error:
        raise invalid(str(error)) from None


def one_page(ranked: Sequence[Item], start: int, size: int, tokens: PageTokens, query: str) -> tuple[list[Item], str]:
    """The page of ``ranked`` from ``start``, and the token of the next (empty after the last)."""
    more = start + size < len(ranked)
    return list(ranked[start : start + size]), tokens.issue(start + size, query) if more else ""
