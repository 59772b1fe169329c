"""Builds and runs the detector's gRPC server."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from facesearch.v1 import detector_pb2, detector_pb2_grpc
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.service import DetectorService
from services.detector.settings import DetectorSettings
from services.runtime.logs import configure_logging
from services.runtime.server import GrpcServer, ServiceBinding

SERVICE_NAME = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name
log = logging.getLogger(__name__)


def build_server(settings: DetectorSettings) -> GrpcServer:
    """Loads the detector model and wires it into a server (not started yet)."""
    torch.set_num_threads(settings.torch_threads)
    detector = FaceDetector(create_backend(settings), settings)
    executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="detector")
    service = DetectorService(detector, settings, executor)
    binding = ServiceBinding(SERVICE_NAME, service, detector_pb2_grpc.add_DetectorServicer_to_server)
    return GrpcServer("detector", settings, [binding])


def run(settings: DetectorSettings) -> None:
    """Runs the detector until SIGTERM or Ctrl-C."""
    configure_logging("detector", settings.log_level, settings.log_format)
    server = build_server(settings)
    log.info("detector model loaded", extra={"backend": settings.backend, "device": settings.device})
    asyncio.run(server.serve_until_signalled())
