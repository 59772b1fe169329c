"""``facesearch detect``: the faces in photos, from a running detector (no gateway)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from cli.exit_status import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DETECT_TIMEOUT_S = 300


def detect(args: argparse.Namespace) -> int:
    from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
    from launcher.processes import local_service_token
    from services.runtime.channels import sending_service_token

    missing = [str(p) for p in args.photos if not p.is_file()]
    if missing:
        print(f"facesearch detect: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    options = detector_pb2.DetectOptions(omit_crops=True)
    channel = grpc.insecure_channel(args.address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    with sending_service_token(channel, local_service_token()) as channel:
        stub = detector_pb2_grpc.DetectorStub(channel)
        for start in range(0, len(args.photos), args.batch):
            paths = args.photos[start : start + args.batch]
            images = [common_pb2.Image(content=p.read_bytes(), uri=str(p)) for p in paths]
            try:
                request = detector_pb2.DetectBatchRequest(images=images, options=options)
                reply = stub.DetectBatch(request, timeout=DETECT_TIMEOUT_S)
            except grpc.RpcError as error:
                print(f"facesearch detect: {error.code().name}: {error.details()}", file=sys.stderr)
                return EXIT_UNAVAILABLE if error.code() == grpc.StatusCode.UNAVAILABLE else EXIT_FAILED
            for path, item in zip(paths, reply.items):
                if item.HasField("error"):
                    status = EXIT_FAILED
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
