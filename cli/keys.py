"""``facesearch keys add``: API keys of the gateway's tenants.

The key's line goes to the keys file the gateway reads: ``--file``, else the gateway's
``api_keys_file`` setting (``FACESEARCH_GATEWAY_API_KEYS_FILE`` or the config file), else
the file `facesearch up` made in this folder. A running gateway picks the new key up
within ``api_keys_reload_s`` (no restart).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.exit_status import EXIT_OK, EXIT_USAGE
from gateway.auth import LOCAL_KEYS_FILE, KeyFileError, add_key
from gateway.settings import GatewaySettings
from services.runtime.settings import SettingsError, load_settings


def keys_file(given: Path | None) -> Path:
    """The keys file the gateway reads, as an absolute path; raises KeyFileError when there is none."""
    if given is not None:
        return given.resolve()
    configured = load_settings(GatewaySettings).api_keys_file
    if configured is not None:
        return configured.resolve()
    local = LOCAL_KEYS_FILE.resolve()
    if not local.is_file():
        raise KeyFileError(
            f"no keys file: {local} does not exist. Run this in the folder `facesearch up` runs in, "
            "set FACESEARCH_GATEWAY_API_KEYS_FILE to the gateway's file, or pass --file"
        )
    return local


def keys_add(args: argparse.Namespace) -> int:
    try:
        path = keys_file(args.file)
        key = add_key(path, args.tenant, "read" if args.read_only else "write")
    except (KeyFileError, SettingsError, OSError) as error:
        print(f"facesearch keys add: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(key)
    print(f"(its hash was added to {path}; the key is not stored anywhere: keep it now)", file=sys.stderr)
    return EXIT_OK
