"""The ``facesearch`` command: ``up`` and the services' own commands here; the commands that
talk to the gateway are in gateway/commands.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from cli.gateway_commands import add_commands
from services.embedder.serving.provisioning import FLAVOURS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SOME_PHOTOS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facesearch", description="Self-hosted face search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the facesearch services on localhost (Ctrl-C stops)")
    up.set_defaults(handler=_up)

    detector = commands.add_parser("detector", help="the detector service")
    detector_commands = detector.add_subparsers(dest="detector_command", required=True, metavar="ACTION")
    detector_commands.add_parser("serve", help="run the detector in this process").set_defaults(handler=_detector_serve)

    embedder = commands.add_parser("embedder", help="the embedder service (FaceNet on Triton)")
    embedder_commands = embedder.add_subparsers(dest="embedder_command", required=True, metavar="ACTION")
    embedder_serve = embedder_commands.add_parser(
        "serve", help="prepare the models if needed, then run Triton on them until Ctrl-C"
    )
    embedder_serve.add_argument("--force", action="store_true", help="remake the model files first")
    embedder_serve.set_defaults(handler=_embedder_serve)

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
    prepare.set_defaults(handler=_models_prepare)

    detect = commands.add_parser("detect", help="find the faces in photos with a running detector")
    detect.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    detect.add_argument("--address", default="127.0.0.1:50051", help="detector address")
    detect.add_argument("--json", action="store_true", help="one JSON object per photo")
    detect.add_argument("--batch", type=int, default=8, help="photos per DetectBatch call")
    detect.set_defaults(handler=_detect)

    add_commands(commands)

    args = parser.parse_args(argv)
    return args.handler(args)


def _up(_args: argparse.Namespace) -> int:
    from launcher.processes import Suite, default_suite
    from services.runtime.settings import SettingsError

    try:
        suite = Suite(default_suite())
    except SettingsError as error:
        print(f"facesearch up: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        "starting facesearch services... (the embedder's first start converts the FaceNet weights: ~30 s)",
        file=sys.stderr,
    )
    try:
        suite.start()
    except RuntimeError as error:
        print(f"facesearch up: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    for service in suite.services:
        print(
            f"  {service.name:<10} grpc {service.address}   metrics http://127.0.0.1:{service.metrics_port}/metrics"
            f"{service.extra}",
            file=sys.stderr,
        )
    print("ready; press Ctrl-C to stop", file=sys.stderr)
    try:
        status = suite.wait()
    finally:
        suite.stop()
    print("stopped", file=sys.stderr)
    return status


def _detector_serve(_args: argparse.Namespace) -> int:
    from services.detector.server import run
    from services.detector.settings import DetectorSettings
    from services.runtime.entrypoint import run_service

    run_service(DetectorSettings, run)
    return EXIT_OK


def _embedder_serve(args: argparse.Namespace) -> int:
    from services.embedder.serving.serve import main as serve

    return serve(force=args.force)


def _models_prepare(args: argparse.Namespace) -> int:
    from services.embedder.serving.provisioning import ProvisioningError, describe, prepare_models
    from services.embedder.settings import EmbedderSettings
    from services.runtime.logs import configure_logging
    from services.runtime.settings import SettingsError, load_settings

    try:
        settings = load_settings(EmbedderSettings)
    except SettingsError as error:
        print(f"facesearch models prepare: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("embedder", settings.log_level, "text")  # progress on stderr
    try:
        manifest = prepare_models(settings, force=args.force, flavours=args.flavour)
    except ProvisioningError as error:
        print(f"facesearch models prepare: {error}", file=sys.stderr)
        return EXIT_FAILED
    if manifest.up_to_date:
        print(f"all models up to date in {manifest.repository} ({len(manifest.verified)} files verified)")
    else:
        for path in manifest.written:
            print(f"wrote {path}")
        for path in manifest.removed:
            print(f"removed {path}")
        print(f"updated {manifest.path}")
    for line in describe(manifest, args.flavour or FLAVOURS):
        print(f"  {line}")
    return EXIT_OK


def _detect(args: argparse.Namespace) -> int:
    from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc

    missing = [str(p) for p in args.photos if not p.is_file()]
    if missing:
        print(f"facesearch detect: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    options = detector_pb2.DetectOptions(omit_crops=True)
    with grpc.insecure_channel(args.address, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)]) as channel:
        stub = detector_pb2_grpc.DetectorStub(channel)
        for start in range(0, len(args.photos), args.batch):
            paths = args.photos[start : start + args.batch]
            images = [common_pb2.Image(content=p.read_bytes(), uri=str(p)) for p in paths]
            try:
                reply = stub.DetectBatch(detector_pb2.DetectBatchRequest(images=images, options=options), timeout=300)
            except grpc.RpcError as error:
                print(f"facesearch detect: {error.code().name}: {error.details()}", file=sys.stderr)
                return EXIT_UNAVAILABLE if error.code() == grpc.StatusCode.UNAVAILABLE else EXIT_SOME_PHOTOS_FAILED
            for path, item in zip(paths, reply.items):
                if item.HasField("error"):
                    status = EXIT_SOME_PHOTOS_FAILED
                    _print_photo(args.json, path, error=item.error.message)
                else:
                    _print_photo(args.json, path, detection=item.detection)
    return status


def _print_photo(as_json: bool, path: Path, detection=None, error: str | None = None) -> None:
    if error is not None:
        if as_json:
            print(json.dumps({"photo": str(path), "error": error}))
        else:
            print(f"{path}: error: {error}")
        return
    faces = [
        {
            "box": [round(v, 1) for v in (f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max)],
            "confidence": round(f.confidence, 4),
            "blur_variance": round(f.quality.blur_variance, 1),
            "blurred": f.quality.blurred,
        }
        for f in detection.faces
    ]
    if as_json:
        print(
            json.dumps(
                {"photo": str(path), "width": detection.image_width, "height": detection.image_height, "faces": faces}
            )
        )
        return
    print(f"{path}: {len(faces)} face(s) in {detection.image_width}x{detection.image_height}")
    for face in faces:
        blurred = " (blurred)" if face["blurred"] else ""
        print(f"  box {face['box']} confidence {face['confidence']}{blurred}")


if __name__ == "__main__":
    sys.exit(main())
