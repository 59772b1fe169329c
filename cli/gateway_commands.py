"""The ``facesearch`` commands that talk to the gateway: index, enroll, verify, identify,
findme, people, delete-person, delete-photo, stats, and ``keys add``.

Exit status: 0 success; 1 some photos failed (or, for ``verify``, not the same person);
2 usage (no API key, a missing file, an unknown person name); 3 the gateway or a service
behind it is unavailable or too slow; 4 the API key was refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

from facesearch.v1 import facesearch_pb2
from gateway.auth import LOCAL_KEY_FILE, LOCAL_KEYS_FILE, KeyFileError, add_key
from sdk.client import FaceSearchClient, FaceSearchError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_DENIED = 0, 1, 2, 3, 4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
API_KEY_VARIABLE = "FACESEARCH_API_KEY"


class UsageError(Exception):
    pass


def add_commands(commands: argparse._SubParsersAction) -> None:
    def command(name: str, help: str, handler) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help)
        parser.add_argument("--address", default="127.0.0.1:50050", help="gateway address")
        parser.add_argument(
            "--api-key",
            default=None,
            help=f"API key (default: ${API_KEY_VARIABLE}, else {LOCAL_KEY_FILE} written by `facesearch up`)",
        )
        parser.set_defaults(handler=lambda args: _run(handler, args))
        return parser

    index = command("index", "detect, embed and store every face of photos (folders are walked)", _index)
    index.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_PHOTO")
    index.add_argument("--json", action="store_true", help="one JSON object per photo")

    enroll = command("enroll", "add reference photos of a person", _enroll)
    enroll.add_argument("name", help="the person's display name")
    enroll.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    enroll.add_argument("--person-id", default="", help="add to this person (default: a new person)")

    verify = command("verify", "same person in both photos? exit status 0 when yes, 1 when not", _verify)
    verify.add_argument("a", type=Path)
    verify.add_argument("b", type=Path)
    verify.add_argument("--threshold", type=float, default=None, help="cosine similarity to accept")

    identify = command("identify", "name the enrolled people in a photo", _identify)
    identify.add_argument("photo", type=Path)
    identify.add_argument("--top-k", type=int, default=3)
    identify.add_argument("--threshold", type=float, default=None)

    findme = command("findme", "every indexed photo of a person, best match first", _findme)
    findme.add_argument("--me", nargs="+", type=Path, default=[], metavar="PHOTO", help="photos of the person")
    findme.add_argument("--person", default="", help="an enrolled person: id or display name")
    findme.add_argument("--threshold", type=float, default=None)
    findme.add_argument("--limit", type=int, default=0, help="at most this many photos (default: all)")
    findme.add_argument("--html", type=Path, default=None, metavar="FILE", help="also write a contact sheet")

    command("people", "list the enrolled people", _people)
    delete_person = command("delete-person", "delete a person and their reference faces", _delete_person)
    delete_person.add_argument("person_id")
    delete_photo = command("delete-photo", "delete an indexed photo and its faces", _delete_photo)
    delete_photo.add_argument("photo_id")
    command("stats", "what the tenant has stored", _stats)

    keys = commands.add_parser("keys", help="API keys of the gateway")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = keys_commands.add_parser("add", help="make a key for a tenant; prints it once")
    add.add_argument("tenant")
    add.add_argument("--read-only", action="store_true", help="may only search, not index, enrol or delete")
    add.add_argument("--file", type=Path, default=LOCAL_KEYS_FILE, help=f"keys file (default {LOCAL_KEYS_FILE})")
    add.set_defaults(handler=_keys_add)


def _api_key(args: argparse.Namespace) -> str:
    key = args.api_key or os.environ.get(API_KEY_VARIABLE, "")
    if not key and LOCAL_KEY_FILE.is_file():
        key = LOCAL_KEY_FILE.read_text().strip()
    if not key:
        raise UsageError(f"no API key: pass --api-key, set {API_KEY_VARIABLE}, or run `facesearch up` once")
    return key


def _run(handler, args: argparse.Namespace) -> int:
    name = f"facesearch {args.command}"
    try:
        with FaceSearchClient(args.address, _api_key(args), timeout_s=300) as client:
            return handler(client, args)
    except UsageError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except FaceSearchError as error:
        print(f"{name}: {error}", file=sys.stderr)
        if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
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


def _index(client: FaceSearchClient, args: argparse.Namespace) -> int:
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


def _enroll(client: FaceSearchClient, args: argparse.Namespace) -> int:
    reply = client.enroll(args.name, _existing(args.photos), person_id=args.person_id)
    print(f"person {reply.person_id}: {reply.reference_faces} reference face(s)")
    for path, result in zip(args.photos, reply.results, strict=True):
        status = facesearch_pb2.PhotoStatus.Name(result.status).removeprefix("PHOTO_STATUS_").lower()
        print(f"  {path}: {status}{': ' + result.message if result.message else ''}")
    enrolled = any(r.status == facesearch_pb2.PHOTO_STATUS_ENROLLED for r in reply.results)
    return EXIT_OK if enrolled else EXIT_FAILED


def _settings(settings: facesearch_pb2.MatchSettings) -> str:
    return f"threshold {settings.similarity_threshold:.3f}, model {settings.model.id} v{settings.model.version}"


def _verify(client: FaceSearchClient, args: argparse.Namespace) -> int:
    reply = client.verify(*_existing([args.a, args.b]), threshold=args.threshold)
    verdict = "same person" if reply.same_person else "different people"
    print(f"{verdict}: similarity {reply.similarity:.3f}, distance {reply.distance:.3f} ({_settings(reply.settings)})")
    return EXIT_OK if reply.same_person else EXIT_FAILED


def _box(box) -> str:
    return f"[{box.x_min:.0f}, {box.y_min:.0f}, {box.x_max:.0f}, {box.y_max:.0f}]"


def _identify(client: FaceSearchClient, args: argparse.Namespace) -> int:
    [photo] = _existing([args.photo])
    reply = client.identify(photo, top_k=args.top_k, threshold=args.threshold)
    print(f"{len(reply.faces)} face(s) ({_settings(reply.settings)})")
    for face in reply.faces:
        named = ", ".join(f"{c.display_name or c.person_id} {c.similarity:.3f}" for c in face.candidates)
        print(f"  face {face.face.index} {_box(face.face.box)}: {named or 'unknown'}")
    return EXIT_OK


def _person_id(client: FaceSearchClient, person: str) -> str:
    people = client.list_people()
    if any(p.person_id == person for p in people):
        return person
    named = [p for p in people if p.display_name.casefold() == person.casefold()]
    if len(named) != 1:
        found = "no one" if not named else f"{len(named)} people ({', '.join(p.person_id for p in named)})"
        raise UsageError(f"--person {person!r} names {found}; give a person id")
    return named[0].person_id


def _findme(client: FaceSearchClient, args: argparse.Namespace) -> int:
    if not args.me and not args.person:
        raise UsageError("give photos of the person (--me) or an enrolled person (--person)")
    references = _existing(args.me)
    person_id = _person_id(client, args.person) if args.person else ""
    matches = []
    for match in client.find_me_all(references, person_id=person_id, threshold=args.threshold):
        matches.append(match)
        print(f"{match.similarity:.3f}  {match.photo_id}  {match.photo_uri}")
        if args.limit and len(matches) >= args.limit:
            break
    print(f"{len(matches)} photo(s)", file=sys.stderr)
    if args.html is not None:
        from cli.contact_sheet import write_contact_sheet

        title = f"Photos of {args.person or ', '.join(p.name for p in references)}"
        write_contact_sheet(args.html, matches, title)
        print(f"contact sheet: {args.html}", file=sys.stderr)
    return EXIT_OK


def _people(client: FaceSearchClient, _args: argparse.Namespace) -> int:
    for person in client.list_people():
        print(f"{person.person_id}  {person.display_name}  ({person.reference_faces} reference face(s))")
    return EXIT_OK


def _delete_person(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(f"deleted {client.delete_person(args.person_id)} face(s)")
    return EXIT_OK


def _delete_photo(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(f"deleted {client.delete_photo(args.photo_id)} face(s)")
    return EXIT_OK


def _stats(client: FaceSearchClient, _args: argparse.Namespace) -> int:
    stats = client.stats()
    print(f"{stats.photos} photos, {stats.faces} faces, {stats.people} people ({_settings(stats.settings)})")
    return EXIT_OK


def _keys_add(args: argparse.Namespace) -> int:
    try:
        key = add_key(args.file, args.tenant, "read" if args.read_only else "write")
    except (KeyFileError, OSError) as error:
        print(f"facesearch keys add: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(key)
    print(f"(its hash was added to {args.file}; the key is not stored anywhere: keep it now)", file=sys.stderr)
    return EXIT_OK
