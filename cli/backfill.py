"""`facesearch backfill SOURCE`: every photo of a folder tree, a listing or an S3 prefix,
through the gateway, resumable (``backfill.journal``) and shardable (``--shard i/N``)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from backfill.journal import Journal, JournalMismatch
from backfill.runner import Backfill, Progress
from backfill.sources import Shard, open_source
from cli.archive import UsageError
from cli.exit_status import EXIT_OK
from sdk.client import FaceSearchClient

JOURNALS = Path("var/backfill")
EXIT_FAILED_PHOTOS = 1


def journal_path(source: str, shard: Shard) -> Path:
    """Where a backfill of this source and shard keeps its journal by default."""
    name = hashlib.sha256(f"{source}\n{shard.index}/{shard.count}".encode()).hexdigest()[:16]
    return JOURNALS / f"{name}.sqlite"


class ProgressLine:
    """Prints the progress on stderr at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(f"\r{progress.line()}", end="", file=sys.stderr, flush=True)


def backfill(client: FaceSearchClient, args: argparse.Namespace) -> int:
    try:
        shard = Shard.parse(args.shard)
        photos = open_source(args.source)  # checks the source exists
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    del photos
    source = args.source if args.source.startswith("s3://") else str(Path(args.source).resolve())
    try:
        journal = Journal(args.journal or journal_path(source, shard), source, f"{shard.index}/{shard.count}")
    except JournalMismatch as error:
        raise UsageError(str(error)) from None
    try:
        run = Backfill(
            client,
            lambda: open_source(args.source),
            journal,
            shard,
            workers=args.workers,
            batch=args.batch,
            on_progress=ProgressLine(),
        )
        progress = run.run()
        failures = journal.failures()
        counts = journal.counts()
    finally:
        journal.close()
    print(f"\r{progress.line()}", file=sys.stderr)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("indexed", "duplicate", "no_face", "invalid", "failed"))
    print(f"backfill of {args.source} shard {shard.index}/{shard.count}: {summary} (journal {journal.path})")
    if args.failures is not None:
        with args.failures.open("w") as out:
            for key, status, message in failures:
                out.write(json.dumps({"photo_id": key, "status": status, "message": message}) + "\n")
    if failures:
        print(f"{len(failures)} photo(s) failed; running the same command again retries them", file=sys.stderr)
        return EXIT_FAILED_PHOTOS
    return EXIT_OK
