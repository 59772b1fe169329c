"""The web app's settings: ``FACESEARCH_WEB_<FIELD>`` variables, then the ``[web]`` table of the
``FACESEARCH_CONFIG`` file, then the defaults (as every service's, ``services.runtime.settings``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from gateway.auth import LOCAL_KEY_FILE
from services.runtime.settings import ServiceSettings, SettingsError

API_KEY_VARIABLE = "FACESEARCH_API_KEY"
DEFAULT_PORT = 8080


class WebSettings(ServiceSettings):
    section: ClassVar[str] = "web"

    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="HTTP port of the pages.")
    gateway_address: str = Field("127.0.0.1:50050", description="The gateway the pages call.")
    api_key: SecretStr = Field(
        SecretStr(""),
        description="The key of the tenant whose archive the pages show; empty: $FACESEARCH_API_KEY, else the "
        "local tenant's key that `facesearch up` wrote.",
    )
    api_key_file: Path | None = Field(None, description="A file holding the key (when api_key is empty).")
    enabled: bool = Field(True, description="Whether `facesearch up` starts the pages.")
    archive_roots: str = Field(
        "",
        description="The folders photos are served from, separated by ':'; a photo whose URI lies "
        "elsewhere is not shown. Empty: no photo is served.",
    )
    s3_roots: str = Field(
        "",
        description="The s3://bucket/prefix URIs photos in buckets are served from, separated by commas or "
        "spaces; a photo whose s3:// URI lies elsewhere is not shown. Empty: no photo in a bucket is served.",
    )
    s3_endpoint_url: str = Field(
        "", description="Another S3-compatible server; empty: AWS_ENDPOINT_URL, else AWS's own endpoints."
    )
    s3_region: str = Field("", description="The buckets' region; empty: AWS_REGION / AWS_DEFAULT_REGION.")
    max_upload_mb: float = Field(15.0, gt=0, description="Largest selfie accepted.")
    gateway_timeout_s: float = Field(60.0, gt=0)
    cache_max_age_s: int = Field(3600, ge=0, description="How long browsers may keep a photo or thumbnail.")

    @property
    def roots(self) -> list[Path]:
        return [Path(part) for part in self.archive_roots.split(os.pathsep) if part]

    @property
    def buckets(self) -> list[str]:
        return self.s3_roots.replace(",", " ").split()

    def key(self) -> str:
        key = self.api_key.get_secret_value()
        if not key and self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as error:
                raise SettingsError(f"api_key_file {self.api_key_file}: {error.strerror or error}") from None
        key = key or os.environ.get(API_KEY_VARIABLE, "")
        if not key and LOCAL_KEY_FILE.is_file():
            key = LOCAL_KEY_FILE.read_text().strip()
        if not key:
            raise SettingsError(
                f"no API key: set FACESEARCH_WEB_API_KEY or {API_KEY_VARIABLE}, or run `facesearch up` once"
            )
        return key
