"""How the web pages are started: `facesearch web`, and `facesearch up` starting them after the
gateway (and stopping them before it), only when there is a key to call the gateway with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cli.main import main
from launcher.processes import ServiceProcess, Suite, default_suite, http_ok
from services.runtime.ports import free_ports
from tests.conftest import DATA


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A folder of its own for `up` (the local key it makes), and no web settings from outside."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("FACESEARCH_WEB_") or name in ("FACESEARCH_API_KEY", "FACESEARCH_GATEWAY_API_KEYS"):
            monkeypatch.delenv(name)
    return tmp_path


def test_up_starts_the_pages_last_with_the_local_key_and_stops_them_first(here):
    services = default_suite()
    assert [s.name for s in services] == ["detector", "embedder", "search", "gateway", "web"]
    web = services[-1]
    assert web.port == 8080 and web.env["FACESEARCH_WEB_GATEWAY_ADDRESS"] == "127.0.0.1:50050"
    assert web.env["FACESEARCH_WEB_API_KEY_FILE"] == str(here / "var" / "gateway" / "local.key")
    assert [[s.name for s in tier] for tier in Suite(services)._stop_tiers()] == [
        ["web"],
        ["gateway"],
        ["detector", "embedder", "search"],
    ]
    plain = [ServiceProcess("a", "a", 1, 0), ServiceProcess("b", "b", 2, 0)]
    assert [[s.name for s in tier] for tier in Suite(plain)._stop_tiers()] == [["b"], ["a"]], "the last is the front"


def test_up_leaves_the_pages_out_without_a_key_or_when_switched_off(here, monkeypatch):
    monkeypatch.setenv("FACESEARCH_GATEWAY_API_KEYS", "me " + "0" * 64)  # hashes only: no key to call with
    assert "web" not in [s.name for s in default_suite()]
    monkeypatch.setenv("FACESEARCH_WEB_API_KEY", "the-key")
    assert "web" in [s.name for s in default_suite()]
    monkeypatch.setenv("FACESEARCH_WEB_ENABLED", "false")
    assert "web" not in [s.name for s in default_suite()]


def test_the_supervised_pages_become_ready_and_stop(here, monkeypatch):
    """`python -m web` as `up` runs it, supervised: ready once /healthz answers, stopped by SIGTERM."""
    port, gateway = free_ports(2)
    service = ServiceProcess(
        "web",
        "web",
        port=port,
        metrics_port=port,
        env={"FACESEARCH_WEB_API_KEY": "k", "FACESEARCH_WEB_GATEWAY_ADDRESS": f"127.0.0.1:{gateway}"},
        readiness=http_ok(f"http://127.0.0.1:{port}/healthz"),
        front=True,
    )
    suite = Suite([service], startup_timeout_s=60)
    suite.start()
    try:
        assert service.ready and http_ok(f"http://127.0.0.1:{port}/metrics")()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200  # the gateway is down: the page says so, and still answers
            assert b"cannot answer now" in page.read()
    finally:
        suite.stop(grace_s=5)
    assert not service.child.running
    assert not http_ok(f"http://127.0.0.1:{port}/healthz")()


def test_facesearch_web_refuses_a_root_that_is_not_a_folder(here, capsys):
    assert main(["web", "--api-key", "k", "--root", str(here / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["web"]) == 2 and "no API key" in capsys.readouterr().err


def test_facesearch_web_serves_the_photos_of_its_root(here):
    [port] = free_ports(1)
    command = [sys.executable, "-m", "cli.main", "web", "--port", str(port), "--api-key", "k"]
    command += ["--address", "127.0.0.1:1", "--root", str(DATA / "photoprism")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{port}/healthz")():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/media/photo?uri={DATA / 'photoprism' / '2.jpg'}"
        with urllib.request.urlopen(url, timeout=10) as photo:
            assert photo.headers["Content-Type"] == "image/jpeg"
            assert photo.read() == (DATA / "photoprism" / "2.jpg").read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then dies of the signal it caught, as it was meant to.
        assert process.wait(10) in (0, -signal.SIGTERM)


def test_facesearch_web_takes_folders_and_bucket_prefixes_as_roots(here, monkeypatch):
    from cli.main import build_parser
    from cli.web import settings_from

    monkeypatch.delenv("FACESEARCH_WEB_ARCHIVE_ROOTS", raising=False)
    monkeypatch.delenv("FACESEARCH_WEB_S3_ROOTS", raising=False)
    args = build_parser().parse_args(
        ["web", "--api-key", "k", "--root", str(DATA / "photoprism"), "--root", "s3://photos/family/"]
    )
    settings = settings_from(args)
    assert settings.roots == [(DATA / "photoprism").resolve()]
    assert settings.buckets == ["s3://photos/family/"]
