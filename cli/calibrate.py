"""The ``calibrate`` verb: the match threshold for a target FAR, measured through the
running gateway on labelled photos (``evaluation.served``), and stored for the gateway to
use from its next start (``gateway.thresholds``)."""

from __future__ import annotations

import argparse
import sys

from cli.archive import UsageError
from cli.exit_status import EXIT_OK
from evaluation.calibration import calibrate
from evaluation.served import EvaluationError, labelled_photos, labelled_scores
from gateway.thresholds import store_threshold
from sdk.client import FaceSearchClient


def calibrate_threshold(client: FaceSearchClient, args: argparse.Namespace) -> int:
    try:
        photos = labelled_photos(args.dataset)
        if not 0 < args.far < 1:
            raise UsageError(f"--far must be in (0, 1), got {args.far}")
        model_id = client.stats().settings.model.id
        _, genuine, impostor = labelled_scores(client, photos, lambda line: print(line, file=sys.stderr))
    except EvaluationError as error:
        raise UsageError(str(error)) from None
    result = calibrate(genuine, impostor, args.far)
    print(
        f"model {model_id}: threshold {result.threshold:.4f} (L2 {result.l2_distance:.3f}) for FAR <= {args.far:g}\n"
        f"  FAR {result.far:.5f} ({result.impostors_accepted} of {result.different_person_pairs} different-person "
        f"pairs), {result.confidence:.0%} upper bound {result.far_upper:.5f}\n"
        f"  VAL {result.val:.3f} on {result.same_person_pairs} same-person pairs"
    )
    store_threshold(args.thresholds_file, model_id, result.as_dict(), args.dataset)
    print(f"stored in {args.thresholds_file}; the gateway uses it from its next start")
    return EXIT_OK
