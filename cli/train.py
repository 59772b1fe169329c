"""The ``train`` verb: triplet-loss fine-tuning of the embedding model on labelled photos
(``services.embedder.training``), with its report, and optionally its export as a new model
version in the embedder's model repository."""

from __future__ import annotations

import argparse
import json
import sys

from cli.exit_status import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def train(args: argparse.Namespace) -> int:
    from services.embedder.models import DEFAULT_MODEL
    from services.embedder.training.loop import TrainConfig, TrainingError
    from services.embedder.training.run import train as run_training

    try:
        config = TrainConfig(
            steps=args.steps,
            mining=args.mining,
            margin=args.margin,
            p=args.p,
            k=args.k,
            learning_rate=args.learning_rate,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            trainable=tuple(name.strip() for name in args.trainable.split(",") if name.strip()),
            augment=not args.no_augment,
        )
    except ValueError as error:
        print(f"facesearch train: {error}", file=sys.stderr)
        return EXIT_USAGE
    model, weights_path, repository = DEFAULT_MODEL, None, None
    if args.export or args.model_repository is None:
        from services.embedder.settings import EmbedderSettings
        from services.runtime.settings import SettingsError, load_settings

        try:
            settings = load_settings(EmbedderSettings)
        except SettingsError as error:
            print(f"facesearch train: {error}", file=sys.stderr)
            return EXIT_USAGE
        model, weights_path, repository = settings.model, settings.weights_path, settings.model_repository
    if args.model_repository is not None:
        repository = args.model_repository
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    def progress(result) -> None:
        if result.step == 1 or result.step % 10 == 0 or result.step == config.steps:
            print(
                f"step {result.step}/{config.steps}: loss {result.loss:.4f}, "
                f"{result.active:.0%} of {result.triplets} triplets active",
                file=sys.stderr,
            )

    try:
        run = run_training(
            args.dataset,
            args.out,
            config,
            resume=args.resume,
            held_out=args.held_out,
            model=model,
            weights_path=weights_path,
            export_repository=repository if args.export else None,
            progress=progress,
        )
    except FileNotFoundError as error:
        print(f"facesearch train: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as error:
        print(f"facesearch train: {error}", file=sys.stderr)
        return EXIT_FAILED
    report = run.report
    for moment in ("before", "after"):
        figures = report[moment] or {}
        if "roc_auc" in figures:
            vals = ", ".join(f"VAL@FAR {far} {point['val']:.3f}" for far, point in figures["val_at_far"].items())
            print(f"{moment}: ROC AUC {figures['roc_auc']:.4f}, {vals}")
    print(json.dumps(report["loss"]))
    if report["export"]:
        export = report["export"]
        print(
            f"exported {export['model']} version {export['version']} to {export['repository']}; serve it with "
            f"FACESEARCH_EMBEDDER_MODEL_VERSION={export['version']}"
        )
    print(f"report: {run.report_path}")
    return EXIT_OK
