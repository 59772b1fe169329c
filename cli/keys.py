"""``facesearch keys add``: API keys of the gateway's tenants."""

from __future__ import annotations

import argparse
import sys

from cli.exit_status import EXIT_OK, EXIT_USAGE
from gateway.auth import KeyFileError, add_key


def keys_add(args: argparse.Namespace) -> int:
    try:
        key = add_key(args.file, args.tenant, "read" if args.read_only else "write")
    except (KeyFileError, OSError) as error:
        print(f"facesearch keys add: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(key)
    print(f"(its hash was added to {args.file}; the key is not stored anywhere: keep it now)", file=sys.stderr)
    return EXIT_OK
