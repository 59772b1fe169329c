"""Serving the pages: the app on uvicorn, with a client of the gateway built from the settings."""

from __future__ import annotations

import functools
import logging

import uvicorn

from sdk.client import FaceSearchClient
from web.app import create_app
from web.media import s3_client
from web.settings import WebSettings


def build_app(settings: WebSettings, client: FaceSearchClient | None = None):
    """The app for ``settings``; ``client``: the gateway client to use (else one is made)."""
    client = client or FaceSearchClient(settings.gateway_address, settings.key(), timeout_s=settings.gateway_timeout_s)
    return create_app(
        client,
        settings.roots,
        max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
        cache_max_age_s=settings.cache_max_age_s,
        s3_roots=settings.buckets,
        s3_client=functools.partial(s3_client, settings.s3_endpoint_url, settings.s3_region),
    )


def server(settings: WebSettings, client: FaceSearchClient | None = None) -> uvicorn.Server:
    """A uvicorn server of the app (not started: ``run()`` it, or start it in a thread)."""
    config = uvicorn.Config(
        build_app(settings, client),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
    )
    return uvicorn.Server(config)


def run(settings: WebSettings) -> None:
    logging.getLogger("web").info("pages on http://%s:%d", settings.host, settings.port)
    server(settings).run()
