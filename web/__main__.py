"""``python -m web``: the pages, with their settings from the environment (``web.settings``)."""

from __future__ import annotations

import sys

from services.runtime.settings import SettingsError, load_settings
from web.server import run
from web.settings import WebSettings


def main() -> int:
    try:
        settings = load_settings(WebSettings)
        settings.key()
    except SettingsError as error:
        print(f"web: {error}", file=sys.stderr)
        return 2
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
