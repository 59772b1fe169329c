"""Starting a service from the command line with settings from the environment."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from services.runtime.settings import SettingsError, SettingsT, load_settings

EXIT_BAD_SETTINGS = 2


def run_service(settings_cls: type[SettingsT], run: Callable[[SettingsT], None]) -> NoReturn:
    """Loads the settings and runs the service; bad settings or a model that
    cannot load end the process with a message and exit status 2."""
    try:
        settings = load_settings(settings_cls)
        run(settings)
    except (SettingsError, FileNotFoundError, ValueError) as error:
        print(f"cannot start the {settings_cls.section}: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    sys.exit(0)
