"""Backfill against IndexPhotos on the same photos, and what a kill costs.

The photos of ../shared/data are copied ``--copies`` times into a folder tree, each copy
re-encoded so that its bytes differ (JPEG quality changed by one step, or a PNG's metadata:
the same faces, distinct photos for the gateway's duplicate check). Then, with the whole
suite in this process (``launcher.in_process.LocalSuite``, default settings):

- ``facesearch index``'s way: the folder as one IndexPhotos stream, into tenant A;
- ``facesearch backfill`` (``backfill.runner``, default workers and batch) into tenant B;
- a backfill into tenant C stopped halfway as SIGKILL stops it (its journal is left as it
  was; photos in flight are lost), then started again: the photos sent twice are counted.

Photos/s and faces/s of each, and the stores compared. Results:
bench/results/backfill_throughput.{json,md}.

    python -m bench.backfill_throughput [--copies 3] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from backfill.journal import Journal
from backfill.runner import Backfill
from backfill.sources import directory
from bench.report import DEFAULT_DATA, REPO, RESULTS, heading, measured
from cli.archive import _photos_under
from evaluation.calibration import load_labels
from facesearch.v1 import facesearch_pb2
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

TENANTS = ("acme", "globex", "cli")  # index, backfill, killed and resumed


def make_archive(data: Path, copies: int, root: Path) -> int:
    """Writes the copies; returns the number of photos."""
    count = 0
    for copy in range(copies):
        for photo in load_labels(data / "labels.json"):
            image = Image.open(photo.path)
            target = root / f"copy-{copy}" / photo.key
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            if image.format == "JPEG":
                image.save(buffer, "JPEG", quality=90 - copy, exif=image.info.get("exif", b""))
            else:
                image.save(buffer, "PNG", pnginfo=_note(copy))
            target.write_bytes(buffer.getvalue())
            count += 1
    return count


def _note(copy: int):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("copy", str(copy))
    return info


def index_stream(client: FaceSearchClient, root: Path) -> dict:
    started = time.perf_counter()
    photos = (
        facesearch_pb2.Photo(id=photo_id, uri=str(path), content=path.read_bytes())
        for photo_id, path in _photos_under([root])
    )
    faces = photos_done = 0
    for result in client.index(photos):
        photos_done += 1
        faces += result.faces_stored
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "photos": photos_done, "faces": faces, "photos_per_s": photos_done / seconds}


def backfill_run(client: FaceSearchClient, root: Path, journal: Path, stop_after: int | None = None) -> dict:
    book = Journal(journal, str(root), "0/1")
    run = Backfill(client, lambda: directory(root), book)
    if stop_after is not None:

        def watch(progress) -> None:
            if progress.sent >= stop_after and not run.stop.is_set():
                # As SIGKILL: the walk stops and nothing more reaches the journal, so the
                # answers to the photos in flight are lost.
                run.stop.set()
                book.record = lambda *_: None

        run.on_progress = watch
    started = time.perf_counter()
    progress = run.run()
    seconds = time.perf_counter() - started
    book.close()
    return {
        "seconds": seconds,
        "photos": progress.sent,
        "faces": progress.faces,
        "photos_per_s": progress.sent / seconds if seconds else 0.0,
        "statuses": dict(progress.statuses),
    }


def stored(client: FaceSearchClient) -> int:
    return client.stats().faces


def run(data: Path, copies: int, models: Path, work: Path) -> dict:
    root = work / "archive"
    photos = make_archive(data, copies, root)
    suite = LocalSuite(work / "suite", prepare_model_repository(models), cluster_after_new_faces=0)
    try:
        clients = {t: FaceSearchClient(suite.address, KEYS[t], timeout_s=3600) for t in TENANTS}
        indexed = index_stream(clients["acme"], root)
        backfilled = backfill_run(clients["globex"], root, work / "b.sqlite")
        half = backfill_run(clients["cli"], root, work / "c.sqlite", stop_after=photos // 2)
        resumed = backfill_run(clients["cli"], root, work / "c.sqlite")
        faces = {t: stored(c) for t, c in clients.items()}
        for client in clients.values():
            client.close()
    finally:
        suite.stop()
    in_flight = half["photos"] + resumed["photos"] - photos
    return {
        "data": str(data),
        "copies": copies,
        "photos": photos,
        "index": indexed,
        "backfill": backfilled,
        "stopped": half,
        "resumed": resumed,
        "sent_twice": in_flight,
        "stored_faces": faces,
        "backfill_share_of_index": backfilled["photos_per_s"] / indexed["photos_per_s"],
    }


def markdown(result: dict) -> str:
    i, b = result["index"], result["backfill"]
    return "\n".join(
        [
            *heading("Backfill against IndexPhotos", result),
            f"Command: `{result['command']}`: {result['photos']} photos ({result['copies']} re-encoded copies of "
            f"{result['data']}), the whole suite in this process, default settings.",
            "",
            "| way | seconds | photos | faces | photos/s | faces/s |",
            "|---|---|---|---|---|---|",
            f"| one IndexPhotos stream (`facesearch index`) | {i['seconds']:.1f} | {i['photos']} | {i['faces']} "
            f"| {i['photos_per_s']:.2f} | {i['faces'] / i['seconds']:.2f} |",
            f"| `facesearch backfill` (4 workers, batches of 16) | {b['seconds']:.1f} | {b['photos']} | {b['faces']} "
            f"| {b['photos_per_s']:.2f} | {b['faces'] / b['seconds']:.2f} |",
            "",
            f"Backfill at {result['backfill_share_of_index']:.2f}x the stream's photos/s. Stopped after "
            f"{result['stopped']['photos']} answered photos and started again: {result['resumed']['photos']} sent by "
            f"the second run, {result['sent_twice']} photo(s) sent twice. Faces stored per tenant (index, backfill, "
            f"stopped and resumed): {result['stored_faces']}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="re-encoded copies of the labelled photos")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    def measure() -> dict:
        with tempfile.TemporaryDirectory(prefix="facesearch-backfill-") as work:
            return run(args.data, args.copies, args.models, Path(work))

    measured("backfill_throughput", measure, ["grpcio", "torch", "onnxruntime"], args.out, markdown)


if __name__ == "__main__":
    main()
