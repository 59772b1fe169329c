"""API keys: parsing the hashed key lines, authenticating callers, scopes."""

from __future__ import annotations

import stat

import pytest

from gateway.auth import ApiKeys, AuthError, KeyFileError, add_key, hash_key, key_line


def bearer(key: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {key}")]


def test_keys_are_matched_by_hash_and_give_the_tenant_and_scope():
    keys = ApiKeys.parse([key_line("acme", "k1"), key_line("globex", "k2", "read"), "# a comment", ""], "test")
    assert keys.authenticate(bearer("k1")).tenant == "acme"
    reader = keys.authenticate(bearer("k2"))
    assert (reader.tenant, reader.scope) == ("globex", "read")
    reader.require("read")
    with pytest.raises(AuthError) as caught:
        reader.require("write")
    assert caught.value.permission
    assert "k1" not in key_line("acme", "k1"), "only the hash is written"


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "")],
        [("authorization", "Bearer ")],
        [("authorization", "Basic k1")],
        [("authorization", "Bearer k3")],
    ],
)
def test_missing_or_unknown_keys_are_refused(metadata):
    keys = ApiKeys.parse([key_line("acme", "k1")], "test")
    with pytest.raises(AuthError) as caught:
        keys.authenticate(metadata)
    assert not caught.value.permission


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("acme", "expected"),
        ("acme not-a-hash", "SHA-256"),
        (f"acme {hash_key('k')} admin", "scope"),
        (f"bad/tenant {hash_key('k')}", "tenant"),
        (f"acme {hash_key('k')} write extra", "expected"),
    ],
)
def test_bad_key_lines_name_the_line(line, words):
    with pytest.raises(KeyFileError, match=words) as caught:
        ApiKeys.parse(["", line], "keys.txt")
    assert "keys.txt line 2" in str(caught.value)


def test_one_key_cannot_belong_to_two_tenants():
    with pytest.raises(KeyFileError, match="two tenants"):
        ApiKeys.parse([key_line("acme", "k"), key_line("globex", "k")], "keys")


def test_add_key_appends_a_private_hashed_line_and_load_reads_file_and_inline(tmp_path):
    path = tmp_path / "secrets" / "api_keys"
    first, second = add_key(path, "acme"), add_key(path, "globex", "read")
    assert first != second and first.startswith("fs_") and len(first) > 40
    text = path.read_text()
    assert first not in text and hash_key(first) in text and len(text.splitlines()) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = ApiKeys.load(path, inline=key_line("initech", "k9") + ";" + key_line("hooli", "k8"))
    assert len(keys) == 4
    assert keys.authenticate(bearer(second)).scope == "read"
    assert keys.authenticate(bearer("k8")).tenant == "hooli"
    with pytest.raises(KeyFileError, match="no-such-file"):
        ApiKeys.load(tmp_path / "no-such-file")
