"""The verbs that run services on this machine: ``up`` (the whole suite), ``detector serve``,
``embedder serve`` and ``models prepare``."""

from __future__ import annotations

import argparse
import sys

from cli.exit_status import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def up(_args: argparse.Namespace) -> int:
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
            f"  {service.name:<10} {'http://' if service.name == 'web' else 'grpc '}{service.address}"
            f"   metrics http://127.0.0.1:{service.metrics_port}/metrics"
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


def detector_serve(_args: argparse.Namespace) -> int:
    from services.detector.server import run
    from services.detector.settings import DetectorSettings
    from services.runtime.entrypoint import run_service

    run_service(DetectorSettings, run)
    return EXIT_OK


def embedder_serve(args: argparse.Namespace) -> int:
    from services.embedder.serving.serve import main as serve

    return serve(force=args.force)


def models_prepare(args: argparse.Namespace) -> int:
    from services.embedder.serving.flavours import FLAVOURS
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
