"""`facesearch web`: the pages for people (``web/``), served on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.exit_status import EXIT_OK, EXIT_USAGE


def settings_from(args: argparse.Namespace):
    """The web settings: FACESEARCH_WEB_* and the config file, then the options given. A
    ``--root`` is a folder, or an ``s3://bucket/prefix``."""
    from services.runtime.settings import load_settings
    from web.settings import WebSettings

    overrides: dict = {}
    if args.address is not None:
        overrides["gateway_address"] = args.address
    if args.api_key is not None:
        overrides["api_key"] = args.api_key
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    folders = [root for root in args.root if not root.startswith("s3://")]
    buckets = [root for root in args.root if root.startswith("s3://")]
    if folders:
        overrides["archive_roots"] = os.pathsep.join(str(Path(root).resolve()) for root in folders)
    if buckets:
        overrides["s3_roots"] = " ".join(buckets)
    return load_settings(WebSettings, **overrides)


def web(args: argparse.Namespace) -> int:
    from services.runtime.settings import SettingsError
    from web.server import run

    try:
        settings = settings_from(args)
        settings.key()
    except SettingsError as error:
        print(f"facesearch web: {error}", file=sys.stderr)
        return EXIT_USAGE
    missing = [str(root) for root in settings.roots if not root.is_dir()]
    if missing:
        print(f"facesearch web: not a folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.roots and not settings.buckets:
        print("facesearch web: no --root given: the pages will show no photo", file=sys.stderr)
    print(f"pages on http://{settings.host}:{settings.port}/ (Ctrl-C stops)", file=sys.stderr)
    run(settings)
    return EXIT_OK
