"""API keys on loopback (the gateway with the fake analyser of test_gateway_logic): the keys
file is read again when it changes and on SIGHUP, so keys are added and revoked without a
restart; `facesearch keys add` writes the file the gateway reads; scopes as documented."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli.exit_status import EXIT_OK, EXIT_USAGE
from cli.main import main as facesearch
from gateway.auth import LOCAL_KEYS_FILE, ApiKeys, add_key, key_line
from gateway.settings import GatewaySettings
from sdk.client import AsyncFaceSearchClient, FaceSearchClient, FaceSearchError
from services.runtime.background import BackgroundServer
from tests.test_gateway_logic import (
    FakeAnalyser,
    FakeAnalyserGateway,
    Gateway,
    SearchHooks,
    face,
    fake_photo,
    start_gateway,
    start_search,
)


@pytest.fixture(scope="module")
def search() -> Iterator[BackgroundServer]:
    server = start_search(SearchHooks())
    yield server
    server.stop()


def with_keys_file(gateway: Gateway, path: Path, reload_s: float = 0.0) -> Gateway:
    """The gateway, its callers now authenticated by the keys of ``path``."""
    gateway.server.server.service.keys = ApiKeys.load(path, reload_s=reload_s)
    return gateway


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except FaceSearchError as error:
        return error.code
    return grpc.StatusCode.OK


def test_keys_added_and_revoked_in_the_file_take_effect_without_a_restart(search, tmp_path) -> None:
    path = tmp_path / "api_keys"
    first = add_key(path, "acme")
    gateway = with_keys_file(start_gateway(search.address), path)
    try:
        with FaceSearchClient(gateway.server.address, first) as one:
            assert code_of(one.stats) == grpc.StatusCode.OK
            second = add_key(path, "acme", "read")
            with FaceSearchClient(gateway.server.address, second) as two:
                assert code_of(two.stats) == grpc.StatusCode.OK, "a key added while running works"
                # Revoke the first key: the file rewritten without its line.
                lines = [line for line in path.read_text().splitlines() if "read" in line]
                path.write_text("\n".join(lines) + "\n")
                assert code_of(one.stats) == grpc.StatusCode.UNAUTHENTICATED, "a revoked key stops working"
                assert code_of(two.stats) == grpc.StatusCode.OK
                # A broken file leaves the keys as they were.
                path.write_text("this is not a key line\n")
                assert code_of(two.stats) == grpc.StatusCode.OK
                assert code_of(one.stats) == grpc.StatusCode.UNAUTHENTICATED
                path.unlink()
                assert code_of(two.stats) == grpc.StatusCode.OK, "a missing file too"
    finally:
        gateway.server.stop()


def test_the_file_is_checked_at_most_every_reload_s(tmp_path) -> None:
    path = tmp_path / "api_keys"
    path.write_text(key_line("acme", "k1") + "\n")
    keys = ApiKeys.load(path, reload_s=3600)
    path.write_text(key_line("acme", "k2") + "\n")
    bearer = [("authorization", "Bearer k1")]
    assert keys.authenticate(bearer).tenant == "acme", "not read again within reload_s"
    assert keys.reload()
    with pytest.raises(Exception, match="unknown API key"):
        keys.authenticate(bearer)


def test_sighup_reloads_the_keys_file(search, tmp_path) -> None:
    path = tmp_path / "api_keys"
    first = add_key(path, "acme")
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        log_format="text",
        search_address=search.address,
        detector_address="127.0.0.1:1",
        thresholds_file=None,
        shutdown_grace_s=0,
    )
    server = FakeAnalyserGateway(settings, FakeAnalyser())
    server.keys = ApiKeys.load(path, reload_s=3600)  # never by itself within the test

    async def scenario() -> list[grpc.StatusCode]:
        serving = asyncio.create_task(server.serve_until_signalled())
        while server.port is None:
            await asyncio.sleep(0.01)
        second = add_key(path, "acme")
        codes = []
        for key in (first, second, None):
            if key is None:
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.sleep(0.2)
                key = second
            async with AsyncFaceSearchClient(f"127.0.0.1:{server.port}", key) as client:
                try:
                    await client.stats()
                    codes.append(grpc.StatusCode.OK)
                except FaceSearchError as error:
                    codes.append(error.code)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 10)
        return codes

    assert asyncio.run(scenario()) == [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAUTHENTICATED,  # added, not read yet
        grpc.StatusCode.OK,  # after SIGHUP
    ]


def test_read_keys_may_only_call_what_the_docs_list(search, tmp_path) -> None:
    path = tmp_path / "api_keys"
    reader = add_key(path, "scopes", "read")
    gateway = with_keys_file(start_gateway(search.address), path)
    photo = fake_photo(face("ann"))
    try:
        with FaceSearchClient(gateway.server.address, reader) as client:
            allowed = {
                "Verify": lambda: client.verify(photo, fake_photo(face("ann", variant=1))),
                "Identify": lambda: client.identify(photo),
                "FindMe": lambda: client.find_me([photo]),
                "ListPeople": client.list_people,
                "Stats": client.stats,
                "ClusterFaces": client.cluster_faces,
            }
            denied = {
                "Enroll": lambda: client.enroll("Ann", [photo]),
                "IndexPhotos": lambda: list(client.index([photo])),
                "DeletePerson": lambda: client.delete_person("someone"),
                "DeletePhoto": lambda: client.delete_photo("something"),
            }
            assert {name: code_of(call) for name, call in allowed.items()} == dict.fromkeys(allowed, grpc.StatusCode.OK)
            assert {name: code_of(call) for name, call in denied.items()} == dict.fromkeys(
                denied, grpc.StatusCode.PERMISSION_DENIED
            )
    finally:
        gateway.server.stop()


def test_keys_add_writes_the_file_the_gateway_reads(search, tmp_path, monkeypatch, capsys) -> None:
    gateway_dir, elsewhere = tmp_path / "gateway", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("FACESEARCH_GATEWAY_API_KEYS_FILE", raising=False)
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    assert facesearch(["keys", "add", "acme"]) == EXIT_USAGE, "no keys file here: nothing written"
    assert "FACESEARCH_GATEWAY_API_KEYS_FILE" in capsys.readouterr().err
    assert not (elsewhere / LOCAL_KEYS_FILE).exists()

    path = gateway_dir / "api_keys"
    add_key(path, "acme")
    gateway = with_keys_file(start_gateway(search.address), path, reload_s=0)
    try:
        monkeypatch.setenv("FACESEARCH_GATEWAY_API_KEYS_FILE", str(path))
        assert facesearch(["keys", "add", "acme", "--read-only"]) == EXIT_OK
        out = capsys.readouterr()
        key = out.out.strip()
        assert str(path) in out.err and len(path.read_text().splitlines()) == 2
        with FaceSearchClient(gateway.server.address, key) as client:
            assert client.stats().photos == 0, "the new key works on the running gateway"
        # From the folder of `facesearch up`, without the variable: its local file.
        monkeypatch.delenv("FACESEARCH_GATEWAY_API_KEYS_FILE")
        monkeypatch.chdir(gateway_dir)
        (gateway_dir / LOCAL_KEYS_FILE).parent.mkdir(parents=True)
        (gateway_dir / LOCAL_KEYS_FILE).touch()
        assert facesearch(["keys", "add", "globex"]) == EXIT_OK
        assert "globex" in (gateway_dir / LOCAL_KEYS_FILE).read_text()
    finally:
        gateway.server.stop()
