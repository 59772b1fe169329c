"""The ``eval`` verb: how well the running suite recognises the people of labelled photos,
measured through the gateway with the caller's API key, written as JSON and one HTML page.

- verification and identification come from the similarities ``facesearch calibrate``
  reads (``cli.calibrate.measure``: one Identify similarity per pair), on the pairs
  ``evaluation.calibration`` labels;
- FindMe: every photo is indexed into the tenant (its id: SET/FILE), each identity with
  3 or more labelled photos is enrolled from its first one-person photo, and FindMe by
  that person at the configured threshold gives the photos scored
  (``evaluation.recognition``).

The tenant must store nothing when it starts (no photos, no people); every photo and
person it adds is deleted at the end, also when it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cli.archive import UsageError, with_client
from cli.calibrate import labelled_photos, measure
from cli.evaluation_report import comparison_page, report_page
from cli.exit_status import EXIT_OK, EXIT_USAGE
from evaluation.calibration import LabelledPhoto, labelled_pairs
from evaluation.recognition import FindMeTarget, findme_scores, findme_targets, identification, verification
from evaluation.recognition import worst_mistakes as mistakes
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient

FINDME_MIN_PHOTOS = 3


def evaluate_dataset(
    client: FaceSearchClient,
    dataset: Path,
    progress: Callable[[str], None] = lambda _: None,
    *,
    keep_pairs: bool = False,
) -> dict:
    """Every measure of the labelled photos of ``dataset``, through the gateway; with
    ``keep_pairs``, also "pairs": the (same-person, different-person) similarities."""
    photos = labelled_photos(dataset)
    stats = client.stats()
    if stats.photos or stats.people:
        raise UsageError(
            f"the tenant stores {stats.photos} photos and {stats.people} people; evaluate with the API key of "
            "a tenant that stores nothing (e.g. `facesearch keys add evaluation`)"
        )
    model = stats.settings.model
    threshold = round(float(stats.settings.similarity_threshold), 6)  # served as a 32-bit float
    scored = measure(client, photos, progress)
    genuine, impostor = labelled_pairs(scored)
    if not genuine or not impostor:
        raise UsageError(f"need same-person and different-person pairs; found {len(genuine)} and {len(impostor)}")
    faces = {(a.photo.key, a.index) for a, _, _ in scored} | {(b.photo.key, b.index) for _, b, _ in scored}
    targets = findme_targets(photos, FINDME_MIN_PHOTOS)
    progress(f"FindMe: indexing {len(photos)} photos, enrolling {len(targets)} people")
    found = find_me(client, photos, targets)
    result = {
        "model": {"id": model.id, "version": model.version},
        "configured_threshold": threshold,
        "dataset": str(dataset),
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "photos": len(photos),
        "photos_with_faces": len({key for key, _ in faces}),
        "faces": len(faces),
        "verification": verification(genuine, impostor, threshold),
        "identification": identification(scored),
        "findme": {"min_photos": FINDME_MIN_PHOTOS, **findme_scores(targets, found)},
        "worst_mistakes": mistakes(scored),
    }
    if keep_pairs:
        result["pairs"] = (genuine, impostor)
    return result


def find_me(
    client: FaceSearchClient, photos: Sequence[LabelledPhoto], targets: Sequence[FindMeTarget]
) -> dict[str, set[str]]:
    """Person key -> keys of the photos FindMe finds for them at the configured threshold,
    with every photo indexed and each target enrolled (those whose enrolment photo gives no
    usable face are left out); all of it deleted afterwards."""
    run = uuid.uuid4().hex[:12]
    indexed: list[str] = []
    people: list[str] = []
    same_bytes: dict[str, list[str]] = defaultdict(list)  # content hash -> photo keys
    found: dict[str, set[str]] = {}
    try:

        def requests() -> Iterator[facesearch_pb2.Photo]:
            for photo in photos:
                yield facesearch_pb2.Photo(id=photo.key, uri=str(photo.path), content=photo.path.read_bytes())

        stored_as: dict[str, str] = {}  # content hash -> the photo id it is stored under
        for result in client.index(requests()):
            same_bytes[result.content_hash].append(result.photo_id)
            if result.status == facesearch_pb2.PHOTO_STATUS_INDEXED:
                indexed.append(result.photo_id)
                stored_as[result.content_hash] = result.photo_id
        alike = {stored_as[h]: keys for h, keys in same_bytes.items() if h in stored_as}
        for number, target in enumerate(targets):
            person_id = f"evaluation-{run}-{number}"
            reply = client.enroll(target.name or target.person_key, [target.enrolment.path], person_id=person_id)
            if not reply.reference_faces:
                continue  # no usable face in the enrolment photo: the person finds nothing
            people.append(person_id)
            matches = client.find_me_all(person_id=person_id)
            found[target.person_key] = {key for m in matches for key in alike.get(m.photo_id, [m.photo_id])}
    finally:
        for person_id in people:
            client.delete_person(person_id)
        for photo_id in indexed:
            client.delete_photo(photo_id)
    return found


def write_results(result: dict, json_path: Path, html_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(report_page(result))


def summary(result: dict) -> str:
    v, ident, findme = result["verification"], result["identification"], result["findme"]["overall"]
    at, best = v["at_threshold"], v["best_accuracy"]
    vals = ", ".join(f"VAL@FAR {p['target_far']:g} {p['val']:.3f}" for p in v["val_at_far"])
    tops = ", ".join(f"top-{k} {a:.3f}" for k, a in ident["top_k"].items())
    return (
        f"model {result['model']['id']}: {v['pairs']['same_person']} same-person and "
        f"{v['pairs']['different_person']} different-person pairs\n"
        f"  ROC AUC {v['roc_auc']:.4f}; best accuracy {best['accuracy']:.4f} at {best['threshold']:.4f}; "
        f"at the configured threshold {at['threshold']:.4f}: accuracy {at['accuracy']:.4f}, "
        f"FAR {at['far']:.5f}, VAL {at['val']:.3f}\n"
        f"  {vals}\n"
        f"  identification ({ident['probes']} probes, leave-one-out): {tops or 'no probes'}\n"
        f"  FindMe ({len(result['findme']['people'])} people): precision {findme['precision']:.3f}, "
        f"recall {findme['recall']:.3f}, F1 {findme['f1']:.3f}"
    )


def evaluate(client: FaceSearchClient, args: argparse.Namespace) -> int:
    result = evaluate_dataset(client, args.dataset, lambda line: print(line, file=sys.stderr))
    json_path, html_path = output_paths(args, result["model"]["id"])
    write_results(result, json_path, html_path)
    print(summary(result))
    print(f"results: {json_path}, {html_path}")
    return EXIT_OK


def output_paths(args: argparse.Namespace, model_id: str) -> tuple[Path, Path]:
    base = args.out / f"evaluation_{model_id}"
    return (args.json or base.with_suffix(".json"), args.html or base.with_suffix(".html"))


def compare(args: argparse.Namespace) -> int:
    """``--compare``: one HTML page of several result files, side by side."""
    try:
        results = [json.loads(Path(p).read_text()) for p in args.compare]
        page = comparison_page(results)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"facesearch eval: cannot compare {', '.join(map(str, args.compare))}: {error!r}", file=sys.stderr)
        return EXIT_USAGE
    html_path = args.html or args.out / "evaluation_comparison.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page)
    print(f"comparison of {len(results)} results: {html_path}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        type=Path,
        nargs="?",
        metavar="DATASET",
        help="a labels.json file, or a folder with a subfolder per person (not with --compare)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="folder for evaluation_MODEL.{json,html} (default: here)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results here instead")
    parser.add_argument("--html", type=Path, default=None, metavar="FILE", help="write the page here instead")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS.json",
        help="no evaluation: one HTML page of these result files side by side",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        if args.dataset is not None:
            print("facesearch eval: give DATASET or --compare, not both", file=sys.stderr)
            return EXIT_USAGE
        return compare(args)
    if args.dataset is None:
        print("facesearch eval: DATASET is needed (or --compare RESULTS.json ...)", file=sys.stderr)
        return EXIT_USAGE
    return with_client(evaluate)(args)
