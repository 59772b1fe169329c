"""Typed settings read from the environment and an optional TOML file.

Every service has a section: its settings come from ``FACESEARCH_<SECTION>_<FIELD>``
environment variables, then from the ``[<section>]`` table of the TOML file named
by ``FACESEARCH_CONFIG``, then from the defaults. Invalid values stop the service
at start with a message naming the variable to fix.

The service token is the exception: one secret shared by the whole suite, so its default
is the ``FACESEARCH_SERVICE_TOKEN`` variable, which every service reads (a service's own
``FACESEARCH_<SECTION>_SERVICE_TOKEN`` or file setting still comes first).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_FILE_VARIABLE = "FACESEARCH_CONFIG"
SERVICE_TOKEN_VARIABLE = "FACESEARCH_SERVICE_TOKEN"
MIN_SERVICE_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """Settings that cannot be used; the message says which and why."""


def _config_file_section(section: str) -> dict[str, Any]:
    path = os.environ.get(CONFIG_FILE_VARIABLE)
    if not path:
        return {}
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}={path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}={path}: not valid TOML: {error}") from None
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [{section}] must be a table")
    return table


def _shared_service_token() -> str | None:
    return os.environ.get(SERVICE_TOKEN_VARIABLE) or None


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has; subclasses add their own and set ``section``."""

    section: ClassVar[str] = "service"
    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset disables, 0 picks one."
    )
    max_message_mb: int = Field(64, ge=1, le=2047, description="Largest gRPC message accepted.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="On SIGTERM, how long in-flight calls may finish.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    service_token: SecretStr | None = Field(
        default_factory=_shared_service_token,
        description="Secret the internal services (detector, search) require of every caller but health "
        "checks, and the gateway sends them; unset: they serve any caller. Default: FACESEARCH_SERVICE_TOKEN.",
    )

    @field_validator("service_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value():
            return None
        if token is not None and len(token.get_secret_value()) < MIN_SERVICE_TOKEN_LENGTH:
            raise ValueError(f"a service token must be at least {MIN_SERVICE_TOKEN_LENGTH} characters")
        return token

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_config = {**cls.model_config, "env_prefix": f"FACESEARCH_{cls.section.upper()}_"}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - not a source here
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - not a source here
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = InitSettingsSource(settings_cls, init_kwargs=_config_file_section(cls.section))
        return (init_settings, env_settings, config_file)


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(settings_cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Builds the settings, turning validation errors into one readable SettingsError."""
    try:
        return settings_cls(**overrides)
    except ValidationError as error:
        prefix = settings_cls.model_config.get("env_prefix", "")
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"]) or "(settings)"
            variable = f"{prefix}{field.split('.')[0].upper()}"
            problems.append(f"  {field} ({variable}): {item['msg']}")
        raise SettingsError(f"invalid {settings_cls.section} settings:\n" + "\n".join(problems)) from None
