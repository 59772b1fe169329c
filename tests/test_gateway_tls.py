"""TLS on the gateway, on loopback (the fake analyser of test_gateway_logic and the real search
service), with certificates made for the test by the openssl command: the gateway serves TLS
only, the SDK and `facesearch` connect with the certificate as root; with a client CA set,
callers need a client certificate it signed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli.exit_status import EXIT_OK, EXIT_UNAVAILABLE
from cli.main import main as facesearch
from gateway.settings import GatewaySettings
from sdk.client import FaceSearchClient
from services.runtime.background import BackgroundServer
from tests.test_gateway_logic import SearchHooks, refused, start_gateway, start_search

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    certificate, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certificate, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("certificates")
    return {name: self_signed(folder, name) for name in ("server", "client", "stranger")}


@pytest.fixture(scope="module")
def search() -> Iterator[BackgroundServer]:
    server = start_search(SearchHooks())
    yield server
    server.stop()


def test_the_gateway_serves_tls_to_callers_that_trust_its_certificate(search, certificates) -> None:
    (certificate, key), (stranger, _) = certificates["server"], certificates["stranger"]
    gateway = start_gateway(search.address, tls_cert_file=certificate, tls_key_file=key)
    address = gateway.server.address
    try:
        with FaceSearchClient(address, "key-verify", root_certificates=certificate.read_bytes()) as client:
            assert client.stats().photos == 0
        with FaceSearchClient(address, "key-verify", timeout_s=3) as plaintext:
            assert refused(plaintext.stats).code == grpc.StatusCode.UNAVAILABLE, "no plaintext port"
        with FaceSearchClient(address, "key-verify", timeout_s=3, root_certificates=stranger.read_bytes()) as wrong:
            assert refused(wrong.stats).code == grpc.StatusCode.UNAVAILABLE, "a certificate it does not trust"
        cli = ["stats", "--address", address, "--api-key", "key-verify"]
        assert facesearch([*cli, "--tls-ca", str(certificate)]) == EXIT_OK
        assert facesearch(cli) == EXIT_UNAVAILABLE
    finally:
        gateway.server.stop()


def test_with_a_client_ca_callers_need_a_client_certificate(search, certificates) -> None:
    (certificate, key), (client_certificate, client_key) = certificates["server"], certificates["client"]
    gateway = start_gateway(
        search.address, tls_cert_file=certificate, tls_key_file=key, tls_client_ca_file=client_certificate
    )
    address, root = gateway.server.address, certificate.read_bytes()
    try:
        with FaceSearchClient(address, "key-verify", timeout_s=3, root_certificates=root) as anonymous:
            assert refused(anonymous.stats).code == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(root, client_key.read_bytes(), client_certificate.read_bytes())
        with FaceSearchClient(address, "key-verify", credentials=credentials) as client:
            assert client.stats().photos == 0
    finally:
        gateway.server.stop()


def test_tls_settings_come_in_pairs(certificates) -> None:
    certificate, key = certificates["server"]
    with pytest.raises(ValueError, match="together"):
        GatewaySettings(tls_cert_file=certificate)
    with pytest.raises(ValueError, match="needs tls_cert_file"):
        GatewaySettings(tls_client_ca_file=certificate)
    assert GatewaySettings(tls_cert_file=certificate, tls_key_file=key).server_credentials() is not None
    assert GatewaySettings().server_credentials() is None
