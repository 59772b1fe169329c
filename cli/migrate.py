"""`facesearch migrate`: move the tenant's faces to another embedding model through the
gateway, then switch to it (gateway/migration.py says how the gateway does each step).

    facesearch migrate --list             the models the tenant's faces are in
    facesearch migrate --to MODEL         move every photo's faces, then switch
    facesearch migrate --drop MODEL       delete the faces of a model no longer in use

Each photo is read again from the URI it was stored with (a path, file:// or s3://) and
sent to the gateway, ``--batch`` photos a call, ``--workers`` calls in flight. Run again,
it moves only what is still missing: an interrupted migration is finished that way. It
switches only when every photo was moved, unless ``--accept-losses``; after the switch it
moves what indexing streams opened before it stored in the old collection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import grpc

from backfill.sources import read_uri
from cli.archive import UsageError
from cli.exit_status import EXIT_OK
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient, FaceSearchError

EXIT_NOT_SWITCHED = 1
SWITCH_ATTEMPTS = 3  # photos indexed meanwhile are moved, then the switch is tried again


@dataclass
class Failure:
    photo_id: str
    uri: str
    reason: str


@dataclass
class Pass:
    """What one pass over the photos still to move did."""

    photos: int = 0
    faces_moved: int = 0
    faces_not_found: int = 0
    failures: list[Failure] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        rate = self.photos / max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.photos} photos, {self.faces_moved} faces moved, {self.faces_not_found} not found again, "
            f"{len(self.failures)} failed, {rate:.1f} photos/s"
        )


def migrate(client: FaceSearchClient, args: argparse.Namespace) -> int:
    if args.list:
        return list_models(client)
    if args.drop:
        deleted = client.drop_model(args.drop)
        print(f"deleted {deleted} faces of {args.drop}")
        return EXIT_OK
    if not args.to:
        raise UsageError("say --to MODEL (or --list, or --drop MODEL)")
    models = client.list_models()
    in_use = next((m.model.id for m in models if m.in_use), "")
    if in_use == args.to:
        others = [m.model.id for m in models if not m.in_use and m.faces]
        return catch_up(client, args, in_use, others)
    source = args.source_model or in_use
    for _ in range(SWITCH_ATTEMPTS):
        done = move(client, args, source)
        if done.failures and not args.accept_losses:
            report(done, args)
            print(
                f"not switched: {len(done.failures)} photos could not be moved; fix them and run again, "
                "or switch anyway with --accept-losses",
                file=sys.stderr,
            )
            return EXIT_NOT_SWITCHED
        if args.no_switch:
            report(done, args)
            return EXIT_OK
        try:
            switched = client.switch_model(args.to, from_model_id=source, allow_missing=args.accept_losses)
        except FaceSearchError as error:
            if error.code != grpc.StatusCode.FAILED_PRECONDITION or "move them first" not in error.message:
                raise
            continue  # photos were indexed meanwhile: move them too
        print(
            f"switched from {switched.previous_model_id} to {switched.model.id}: "
            f"{switched.faces_updated} faces brought up to date, {switched.photos_missing} photos left behind"
        )
        after = move(client, args, source)  # what streams opened before the switch stored
        report(after, args)
        print(f"the faces of {source} stay until `facesearch migrate --drop {source}`")
        return EXIT_OK
    print("not switched: photos kept being indexed; run again", file=sys.stderr)
    return EXIT_NOT_SWITCHED


def catch_up(client: FaceSearchClient, args: argparse.Namespace, in_use: str, others: list[str]) -> int:
    """The tenant uses the target already: moves what is left in the model it came from
    (``others``: the models other than the one in use that still hold faces)."""
    source = args.source_model or (others[0] if len(others) == 1 else "")
    if not source:
        print(f"the tenant uses {in_use} already" + (f"; faces remain in {', '.join(others)}" if others else ""))
        return EXIT_OK
    done = move(client, args, source)
    report(done, args)
    return EXIT_OK


def list_models(client: FaceSearchClient) -> int:
    for entry in client.list_models():
        marks = [word for word, on in (("in use", entry.in_use), ("available", entry.available)) if on]
        print(f"{entry.model.id:<20} {entry.faces:>10} faces  {', '.join(marks)}")
    return EXIT_OK


def move(client: FaceSearchClient, args: argparse.Namespace, source: str) -> Pass:
    """Sends every photo still to move, ``args.workers`` calls of ``args.batch`` in flight."""
    done = Pass()
    photos = client.migration_photos(args.to, from_model_id=source)
    with ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="migrate") as pool:
        in_flight: set[Future] = set()
        for batch in _batches(photos, args.batch):
            if len(in_flight) >= args.workers:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    _count(done, *future.result())
            in_flight.add(pool.submit(_send, client, args, source, batch))
        for future in in_flight:
            _count(done, *future.result())
    print(f"\r{done.line()}", file=sys.stderr)
    return done


def _batches(photos: Iterable[facesearch_pb2.MigrationPhoto], size: int) -> Iterator[list]:
    photos = iter(photos)
    while batch := list(islice(photos, size)):
        yield batch


def _send(
    client: FaceSearchClient, args: argparse.Namespace, source: str, batch: list[facesearch_pb2.MigrationPhoto]
) -> tuple[list[facesearch_pb2.MigrationPhoto], list, list[Failure]]:
    """Reads the photos of a batch and moves those it could read."""
    readable, failures = [], []
    for photo in batch:
        try:
            content = read_uri(photo.photo_uri, root=args.root)
        except Exception as error:  # noqa: BLE001 - any unreadable photo is reported, the others go on
            failures.append(Failure(photo.photo_id, photo.photo_uri, f"cannot read it: {error}"))
            continue
        readable.append(facesearch_pb2.Photo(id=photo.photo_id, uri=photo.photo_uri, content=content))
    results = client.migrate_photos(args.to, readable, from_model_id=source) if readable else []
    return readable, results, failures


def _count(done: Pass, sent: list, results: list, failures: list[Failure]) -> None:
    done.failures += failures
    done.photos += len(sent) + len(failures)
    for photo, result in zip(sent, results, strict=True):
        if result.HasField("error"):
            done.failures.append(Failure(photo.id, photo.uri, result.error.message))
        elif result.faces_not_found:
            reason = f"{result.faces_not_found} of its stored faces were not found again in it"
            done.failures.append(Failure(photo.id, photo.uri, reason))
        done.faces_moved += result.faces_moved
        done.faces_not_found += result.faces_not_found


def report(done: Pass, args: argparse.Namespace) -> None:
    if args.failures is not None and done.failures:
        with Path(args.failures).open("w") as out:
            for failure in done.failures:
                out.write(json.dumps(failure.__dict__) + "\n")
    for failure in done.failures[:10]:
        print(f"  {failure.photo_id}: {failure.reason}", file=sys.stderr)
    if len(done.failures) > 10:
        print(f"  ... and {len(done.failures) - 10} more", file=sys.stderr)
