"""The verbs that call the gateway: index, enroll, verify, identify, findme, people,
delete-person, delete-photo and stats. Each handler takes a ``FaceSearchClient`` and the
parsed arguments and returns the exit status (see ``cli.exit_status``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

from cli.exit_status import EXIT_DENIED, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from facesearch.v1 import facesearch_pb2
from gateway.auth import LOCAL_KEY_FILE
from sdk.client import FaceSearchClient, FaceSearchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
API_KEY_VARIABLE = "FACESEARCH_API_KEY"
GATEWAY_TIMEOUT_S = 300


class UsageError(Exception):
    pass


def _api_key(args: argparse.Namespace) -> str:
    key = args.api_key or os.environ.get(API_KEY_VARIABLE, "")
    if not key and LOCAL_KEY_FILE.is_file():
        key = LOCAL_KEY_FILE.read_text().strip()
    if not key:
        raise UsageError(f"no API key: pass --api-key, set {API_KEY_VARIABLE}, or run `facesearch up` once")
    return key


def _tls_roots(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"--tls-ca {path}: {error.strerror or error}") from None


def with_client(handler):
    """The verb's handler run with a client of the gateway the options name; errors become exit statuses."""
    return lambda args: _run(handler, args)


def _run(handler, args: argparse.Namespace) -> int:
    name = f"facesearch {args.command}"
    try:
        roots = _tls_roots(args.tls_ca)
        with FaceSearchClient(
            args.address, _api_key(args), timeout_s=GATEWAY_TIMEOUT_S, root_certificates=roots
        ) as client:
            return handler(client, args)
    except UsageError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except FaceSearchError as error:
        print(f"{name}: {error}", file=sys.stderr)
        # At capacity even after the client's retries (RESOURCE_EXHAUSTED): a temporary failure too.
        if error.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            return EXIT_UNAVAILABLE
        if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return EXIT_DENIED
        return EXIT_USAGE if error.code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED


def _existing(paths: list[Path]) -> list[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    return paths


def _photos_under(paths: list[Path]) -> Iterator[tuple[str, Path]]:
    """(photo id, file): the path relative to the folder given, or the file name."""
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    yield file.relative_to(path).as_posix(), file
        elif path.is_file():
            yield path.name, path
        else:
            raise UsageError(f"no such file or folder: {path}")


def index(client: FaceSearchClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    photos = list(_photos_under(args.paths))
    counts: Counter[str] = Counter()

    def requests() -> Iterator[facesearch_pb2.Photo]:
        for photo_id, file in photos:  # read one at a time, as the stream asks for them
            yield facesearch_pb2.Photo(id=photo_id, uri=str(file.resolve()), content=file.read_bytes())

    with tqdm(total=len(photos), unit="photo", file=sys.stderr, disable=args.json or None) as progress:
        for result in client.index(requests()):
            status = facesearch_pb2.PhotoStatus.Name(result.status).removeprefix("PHOTO_STATUS_").lower()
            counts[status] += 1
            if args.json:
                print(
                    json.dumps(
                        {
                            "photo_id": result.photo_id,
                            "status": status,
                            "faces_found": result.faces_found,
                            "faces_stored": result.faces_stored,
                            "message": result.message,
                        }
                    )
                )
            elif status in ("invalid", "failed"):
                progress.write(f"{result.photo_id}: {status}: {result.message}", file=sys.stderr)
            progress.update()
            progress.set_postfix(counts, refresh=False)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("indexed", "duplicate", "no_face", "invalid", "failed"))
    print(f"{len(photos)} photos: {summary}", file=sys.stderr)
    return EXIT_FAILED if counts["invalid"] or counts["failed"] else EXIT_OK


def enroll(client: FaceSearchClient, args: argparse.Namespace) -> int:
    reply = client.enroll(args.name, _existing(args.photos), person_id=args.person_id)
    print(f"person {reply.person_id}: {reply.reference_faces} reference face(s)")
    for path, result in zip(args.photos, reply.results, strict=True):
        status = facesearch_pb2.PhotoStatus.Name(result.status).removeprefix("PHOTO_STATUS_").lower()
        print(f"  {path}: {status}{': ' + result.message if result.message else ''}")
    enrolled = any(r.status == facesearch_pb2.PHOTO_STATUS_ENROLLED for r in reply.results)
    return EXIT_OK if enrolled else EXIT_FAILED


def _settings(settings: facesearch_pb2.MatchSettings) -> str:
    return f"threshold {settings.similarity_threshold:.3f}, model {settings.model.id} v{settings.model.version}"


def verify(client: FaceSearchClient, args: argparse.Namespace) -> int:
    reply = client.verify(*_existing([args.a, args.b]), threshold=args.threshold)
    verdict = "same person" if reply.same_person else "different people"
    print(f"{verdict}: similarity {reply.similarity:.3f}, distance {reply.distance:.3f} ({_settings(reply.settings)})")
    return EXIT_OK if reply.same_person else EXIT_FAILED


def _box(box) -> str:
    return f"[{box.x_min:.0f}, {box.y_min:.0f}, {box.x_max:.0f}, {box.y_max:.0f}]"


def identify(client: FaceSearchClient, args: argparse.Namespace) -> int:
    [photo] = _existing([args.photo])
    reply = client.identify(photo, top_k=args.top_k, threshold=args.threshold)
    print(f"{len(reply.faces)} face(s) ({_settings(reply.settings)})")
    for face in reply.faces:
        named = ", ".join(f"{c.display_name or c.person_id} {c.similarity:.3f}" for c in face.candidates)
        print(f"  face {face.face.index} {_box(face.face.box)}: {named or 'unknown'}")
    return EXIT_OK


def person_id_of(client: FaceSearchClient, person: str) -> str:
    """The id of the person ``person`` names: their id, or their display name (hidden ones too)."""
    people = client.list_people(include_hidden=True)
    if any(p.person_id == person for p in people):
        return person
    named = [p for p in people if p.display_name.casefold() == person.casefold()]
    if len(named) != 1:
        found = "no one" if not named else f"{len(named)} people ({', '.join(p.person_id for p in named)})"
        raise UsageError(f"{person!r} names {found}; give a person id")
    return named[0].person_id


def _pages(page) -> Iterator:
    """The matches of every page: ``page(token)`` answers one."""
    token = ""
    while True:
        reply = page(token)
        yield from reply.matches
        token = reply.next_page_token
        if not token:
            return


def findme(client: FaceSearchClient, args: argparse.Namespace) -> int:
    if not args.me and not args.person and not args.people:
        raise UsageError("give photos of the person (--me), an enrolled person (--person) or several (--people)")
    references = _existing(args.me)
    person_id = person_id_of(client, args.person) if args.person else ""
    if args.people:
        people = [person_id_of(client, p) for p in args.people]
        found = _pages(
            lambda token: client.find_people(people, match_all=args.all, threshold=args.threshold, page_token=token)
        )
    else:
        found = client.find_me_all(references, person_id=person_id, threshold=args.threshold)
    matches = []
    for match in found:
        matches.append(match)
        print(f"{match.similarity:.3f}  {match.photo_id}  {match.photo_uri}")
        if args.limit and len(matches) >= args.limit:
            break
    print(f"{len(matches)} photo(s)", file=sys.stderr)
    if args.html is not None:
        from cli.contact_sheet import write_contact_sheet

        title = f"Photos of {args.person or ', '.join(args.people) or ', '.join(p.name for p in references)}"
        write_contact_sheet(args.html, matches, title)
        print(f"contact sheet: {args.html}", file=sys.stderr)
    return EXIT_OK


def people(client: FaceSearchClient, _args: argparse.Namespace) -> int:
    for person in client.list_people():
        print(f"{person.person_id}  {person.display_name}  ({person.reference_faces} reference face(s))")
    return EXIT_OK


def delete_person(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(f"deleted {client.delete_person(args.person_id)} face(s)")
    return EXIT_OK


def delete_photo(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(f"deleted {client.delete_photo(args.photo_id)} face(s)")
    return EXIT_OK


def stats(client: FaceSearchClient, _args: argparse.Namespace) -> int:
    stats = client.stats()
    print(f"{stats.photos} photos, {stats.faces} faces, {stats.people} people ({_settings(stats.settings)})")
    indexing = stats.indexing
    last = (
        indexing.last_photo_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
        if indexing.HasField("last_photo_at")
        else "none yet"
    )
    print(
        f"indexing on this gateway replica: {indexing.streams_open} stream(s) open, "
        f"{indexing.photos_per_second:.1f} photos/s over the last minute, last photo finished: {last}"
    )
    print(f"  this run: {_indexing_counts(indexing.run)}")
    print(f"  since the replica started: {_indexing_counts(indexing.total)}")
    return EXIT_OK


def _indexing_counts(counts: facesearch_pb2.IndexingCounts) -> str:
    return (
        f"{counts.streams} stream(s), {counts.photos_received} photos received, {counts.photos_done} done "
        f"({counts.photos_failed} failed, {counts.photos_duplicate} duplicates, {counts.photos_no_face} without "
        f"a face), {counts.faces_stored} faces stored"
    )
