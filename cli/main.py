"""The ``facesearch`` command: every verb and its options are defined here; each verb's
work is done by a handler in the module named after what it talks to:

- ``cli.local``: run services on this machine (``up``, ``detector serve``, ``embedder serve``,
  ``models prepare``);
- ``cli.detect``: a running detector (``detect``);
- ``cli.archive``: the gateway (``index``, ``enroll``, ``verify``, ``identify``, ``findme``,
  ``people``, ``delete-person``, ``delete-photo``, ``stats``);
- ``cli.calibrate``: the gateway, on labelled photos (``calibrate``);
- ``cli.evaluate``: the gateway, on labelled photos (``eval``);
- ``cli.train``: fine-tuning on labelled photos, in this process (``train``);
- ``cli.keys``: the gateway's API keys file (``keys add``);
- ``cli.migrate``: the gateway, moving the tenant's faces to another model (``migrate``);
- ``cli.web``: the web pages, a client of the gateway (``web``).

Exit statuses: ``cli.exit_status``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli import archive, k8s, local, people
from cli.archive import API_KEY_VARIABLE
from cli.backfill import backfill as backfill_archive
from cli.calibrate import calibrate_threshold
from cli.detect import detect as detect_photos
from cli.evaluate import run as evaluate_run
from cli.keys import keys_add
from cli.migrate import migrate as migrate_model
from cli.train import train as train_model
from cli.web import web as web_pages
from gateway.auth import LOCAL_KEY_FILE, LOCAL_KEYS_FILE
from gateway.settings import LOCAL_THRESHOLDS_FILE
from services.embedder.serving.flavours import FLAVOURS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch", description="Self-hosted face search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- services on this machine -------------------------------------------------------------
    up = commands.add_parser("up", help="start the facesearch services on localhost (Ctrl-C stops)")
    up.set_defaults(handler=local.up)

    detector = commands.add_parser("detector", help="the detector service")
    detector_commands = detector.add_subparsers(dest="detector_command", required=True, metavar="ACTION")
    serve_detector = detector_commands.add_parser("serve", help="run the detector in this process")
    serve_detector.set_defaults(handler=local.detector_serve)

    embedder = commands.add_parser("embedder", help="the embedder service (FaceNet on Triton)")
    embedder_commands = embedder.add_subparsers(dest="embedder_command", required=True, metavar="ACTION")
    embedder_serve = embedder_commands.add_parser(
        "serve", help="prepare the models if needed, then run Triton on them until Ctrl-C"
    )
    embedder_serve.add_argument("--force", action="store_true", help="remake the model files first")
    embedder_serve.set_defaults(handler=local.embedder_serve)

    models = commands.add_parser("models", help="the embedder's Triton model repositories")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prepare = models_commands.add_parser(
        "prepare", help="convert the weights and write the model repositories (only what is missing or stale)"
    )
    prepare.add_argument("--force", action="store_true", help="rewrite every file, even those up to date")
    prepare.add_argument(
        "--flavour",
        action="append",
        choices=FLAVOURS,
        metavar="FLAVOUR",
        help=f"only this flavour (repeatable; default: all of {', '.join(FLAVOURS)})",
    )
    prepare.set_defaults(handler=local.models_prepare)

    detect = commands.add_parser("detect", help="find the faces in photos with a running detector")
    detect.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    detect.add_argument("--address", default="127.0.0.1:50051", help="detector address")
    detect.add_argument("--json", action="store_true", help="one JSON object per photo")
    detect.add_argument("--batch", type=int, default=8, help="photos per DetectBatch call")
    detect.set_defaults(handler=detect_photos)

    train = commands.add_parser(
        "train",
        help="fine-tune the embedding model with a triplet loss on labelled photos",
        description="fine-tune the embedding model with a triplet loss on labelled photos",
    )
    from services.embedder.training.options import DEFAULT_TRAINABLE, MINING

    train.add_argument(
        "dataset", type=Path, metavar="DATASET", help="a labels.json file, or a folder with a subfolder per person"
    )
    train.add_argument("--steps", type=int, required=True, help="training steps (batches) in all")
    train.add_argument("--mining", choices=MINING, default="batch-hard", help="triplet mining")
    train.add_argument("--margin", type=float, default=0.2, help="triplet margin on unit vectors (default 0.2)")
    train.add_argument("--p", type=int, default=8, help="persons per batch (default 8)")
    train.add_argument("--k", type=int, default=4, help="photos per person in a batch (default 4)")
    train.add_argument("--out", type=Path, required=True, help="folder of the crops, checkpoints and report")
    train.add_argument("--resume", action="store_true", help="go on from the latest checkpoint in --out")
    train.add_argument("--learning-rate", type=float, default=1e-5, help="Adam's learning rate (default 1e-5)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    train.add_argument(
        "--trainable",
        default=",".join(DEFAULT_TRAINABLE),
        help=f"the modules trained, the rest frozen (default {','.join(DEFAULT_TRAINABLE)})",
    )
    train.add_argument("--no-augment", action="store_true", help="train on the crops as they are")
    train.add_argument("--held-out", type=float, default=0.25, help="share of identities kept for the measures")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    train.add_argument(
        "--export",
        action="store_true",
        help="add the trained network as a new version of the model in the embedder's model repository",
    )
    train.add_argument(
        "--model-repository", type=Path, default=None, help="the repository to export to (default: the setting's)"
    )
    train.set_defaults(handler=train_model)

    # --- calls to the gateway -----------------------------------------------------------------
    def command(name: str, help: str, handler) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help)
        parser.add_argument("--address", default="127.0.0.1:50050", help="gateway address")
        parser.add_argument(
            "--api-key",
            default=None,
            help=f"API key (default: ${API_KEY_VARIABLE}, else {LOCAL_KEY_FILE} written by `facesearch up`)",
        )
        parser.add_argument(
            "--tls-ca",
            type=Path,
            default=None,
            metavar="PEM",
            help="connect with TLS, trusting the gateway certificate this CA (or self-signed certificate) signed",
        )
        parser.set_defaults(handler=archive.with_client(handler))
        return parser

    index = command("index", "detect, embed and store every face of photos (folders are walked)", archive.index)
    index.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_PHOTO")
    index.add_argument("--json", action="store_true", help="one JSON object per photo")

    enroll = command("enroll", "add reference photos of a person", archive.enroll)
    enroll.add_argument("name", help="the person's display name")
    enroll.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    enroll.add_argument("--person-id", default="", help="add to this person (default: a new person)")

    verify = command("verify", "same person in both photos? exit status 0 when yes, 1 when not", archive.verify)
    verify.add_argument("a", type=Path)
    verify.add_argument("b", type=Path)
    verify.add_argument("--threshold", type=float, default=None, help="cosine similarity to accept")

    identify = command("identify", "name the enrolled people in a photo", archive.identify)
    identify.add_argument("photo", type=Path)
    identify.add_argument("--top-k", type=int, default=3)
    identify.add_argument("--threshold", type=float, default=None)

    findme = command("findme", "every indexed photo of a person, best match first", archive.findme)
    findme.add_argument("--me", nargs="+", type=Path, default=[], metavar="PHOTO", help="photos of the person")
    findme.add_argument("--person", default="", help="an enrolled person: id or display name")
    findme.add_argument(
        "--people", nargs="+", default=[], metavar="PERSON", help="several enrolled people: photos with any of them"
    )
    findme.add_argument("--all", action="store_true", help="with --people: photos with all of them")
    findme.add_argument("--threshold", type=float, default=None)
    findme.add_argument("--limit", type=int, default=0, help="at most this many photos (default: all)")
    findme.add_argument("--html", type=Path, default=None, metavar="FILE", help="also write a contact sheet")

    command("people", "list the enrolled people", archive.people)
    delete_person = command("delete-person", "delete a person and their reference faces", archive.delete_person)
    delete_person.add_argument("person_id")
    delete_photo = command("delete-photo", "delete an indexed photo and its faces", archive.delete_photo)
    delete_photo.add_argument("photo_id")
    command("stats", "what the tenant has stored", archive.stats)
    backfill = command(
        "backfill",
        "index an archive: a folder tree, a file listing paths, or s3://bucket/prefix; resumable, shardable",
        backfill_archive,
    )
    backfill.add_argument("source", metavar="SOURCE")
    backfill.add_argument("--shard", default="0/1", metavar="i/N", help="this shard of N (default: everything)")
    backfill.add_argument("--workers", type=int, default=4, help="IndexPhotos calls in flight")
    backfill.add_argument("--batch", type=int, default=16, help="photos per call")
    backfill.add_argument("--journal", type=Path, default=None, help="checkpoint file (default: var/backfill/...)")
    backfill.add_argument("--failures", type=Path, default=None, help="write the failed photos here (JSON lines)")

    migrate = command(
        "migrate",
        "move the tenant's faces to another embedding model (read again from their URIs), then switch to it",
        migrate_model,
    )
    migrate.add_argument("--to", default="", metavar="MODEL", help="the model to move to")
    migrate.add_argument("--from", dest="source_model", default="", metavar="MODEL", help="default: the one in use")
    migrate.add_argument("--list", action="store_true", help="the models the tenant's faces are in")
    migrate.add_argument("--drop", default="", metavar="MODEL", help="delete the faces of a model not in use")
    migrate.add_argument("--workers", type=int, default=4, help="MigratePhotos calls in flight")
    migrate.add_argument("--batch", type=int, default=8, help="photos per call")
    migrate.add_argument("--root", type=Path, default=None, help="folder that relative photo URIs are under")
    migrate.add_argument("--no-switch", action="store_true", help="move the faces, do not switch")
    migrate.add_argument(
        "--accept-losses", action="store_true", help="switch although some photos or faces could not be moved"
    )
    migrate.add_argument("--failures", type=Path, default=None, help="write the photos not moved here (JSON lines)")

    cluster = command("cluster", "cluster the faces indexed since the last run, in the background", people.cluster)
    cluster.add_argument("--full", action="store_true", help="re-cluster every face (surviving clusters keep ids)")
    cluster.add_argument("--wait", action="store_true", help="wait for the run to end")
    cluster.add_argument("--timeout", type=float, default=3600.0, help="longest wait, seconds")
    clusters = command("clusters", "the stored clusters, largest first", people.clusters)
    clusters.add_argument("--min-size", type=int, default=2, help="smallest cluster listed")
    clusters.add_argument("--named", action="store_true", help="list the named ones too")
    name = command("name", "name a cluster: it becomes a person (new, or --person)", people.name)
    name.add_argument("cluster_id")
    name.add_argument("name", nargs="?", default="", help="display name of a new person")
    name.add_argument("--person", default="", help="an enrolled person the cluster is (id or name)")
    rename = command("rename", "give a person another display name", people.rename)
    rename.add_argument("person", help="id or display name")
    rename.add_argument("name")
    merge = command("merge", "merge people into the first one", people.merge)
    merge.add_argument("person", help="the person kept (id or display name)")
    merge.add_argument("others", nargs="+", help="the people merged into them")
    move = command("move", "move a face of the archive to a person (none: detach it)", people.move)
    move.add_argument("face_id", help="a face id, as `facesearch faces` lists them")
    move.add_argument("person", nargs="?", default="", help="id or display name; none: nobody")
    not_this = command("not", "not this person: the face leaves them for good", people.not_this_person)
    not_this.add_argument("face_id")
    not_this.add_argument("person", help="id or display name")
    hide = command("hide", "hide a person from the people list", people.hide)
    hide.add_argument("person", help="id or display name")
    hide.add_argument("--show", action="store_true", help="show them again")
    person_faces = command("faces", "a person's faces: references and faces of the archive", people.faces)
    person_faces.add_argument("person", help="id or display name")
    calibrate = command(
        "calibrate",
        "choose the match threshold for a target FAR on labelled photos, through the gateway, and store it",
        calibrate_threshold,
    )
    calibrate.add_argument(
        "dataset", type=Path, metavar="DATASET", help="a labels.json file, or a folder with a subfolder per person"
    )
    calibrate.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 0.001)")
    calibrate.add_argument(
        "--thresholds-file",
        type=Path,
        default=LOCAL_THRESHOLDS_FILE,
        help=f"where the threshold is stored per model, the gateway reads it (default {LOCAL_THRESHOLDS_FILE})",
    )
    evaluate = command("eval", "measure how well the running suite recognises the people of labelled photos", None)
    evaluate.add_argument(
        "dataset",
        type=Path,
        nargs="?",
        metavar="DATASET",
        help="a labels.json file, or a folder with a subfolder per person (not with --compare)",
    )
    evaluate.add_argument(
        "--out", type=Path, default=Path("."), help="folder for evaluation_MODEL.{json,html} (default: here)"
    )
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results here instead")
    evaluate.add_argument("--html", type=Path, default=None, metavar="FILE", help="write the page here instead")
    evaluate.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS.json",
        help="no evaluation: one HTML page of these result files side by side",
    )
    evaluate.set_defaults(handler=evaluate_run)

    k8s.add_commands(commands)

    # --- the web pages -----------------------------------------------------------------------
    pages = commands.add_parser(
        "web",
        help="serve the web pages (find me, people, clusters) for a tenant of the gateway",
        description="serve the web pages (find me, people, clusters) for a tenant of the gateway; options "
        "not given come from FACESEARCH_WEB_* settings (docs/web.md)",
    )
    pages.add_argument("--address", default=None, help="gateway address (default 127.0.0.1:50050)")
    pages.add_argument(
        "--api-key",
        default=None,
        help=f"the tenant's API key (default: ${API_KEY_VARIABLE}, else {LOCAL_KEY_FILE} written by `facesearch up`)",
    )
    pages.add_argument("--host", default=None, help="address to serve on (default 127.0.0.1)")
    pages.add_argument("--port", type=int, default=None, help="HTTP port (default 8080)")
    pages.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR_OR_S3",
        help="a folder, or s3://bucket/prefix, photos are served from (repeatable); photos elsewhere are not shown",
    )
    pages.set_defaults(handler=web_pages)

    # --- API keys ------------------------------------------------------------------------------
    keys = commands.add_parser("keys", help="API keys of the gateway")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = keys_commands.add_parser("add", help="make a key for a tenant; prints it once")
    add.add_argument("tenant")
    add.add_argument("--read-only", action="store_true", help="may only search, not index, enrol or delete")
    add.add_argument(
        "--file",
        type=Path,
        default=None,
        help=f"keys file (default: the gateway's api_keys_file setting, else {LOCAL_KEYS_FILE} of `facesearch up`)",
    )
    add.set_defaults(handler=keys_add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
