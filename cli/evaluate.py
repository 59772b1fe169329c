"""The ``eval`` verb: how well the running suite recognises the people of labelled photos,
measured through the gateway with the caller's API key (``evaluation.served``), written as
JSON and one HTML page."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.archive import UsageError, with_client
from cli.evaluation_report import comparison_page, report_page
from cli.exit_status import EXIT_OK, EXIT_USAGE
from evaluation.served import EvaluationError, evaluate_dataset
from sdk.client import FaceSearchClient


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
        f"recall {findme['recall']:.3f}, F1 {findme['f1']:.3f}" + _several_references(result)
    )


def _several_references(result: dict) -> str:
    """One line per number of references: FindMe precision / recall by each rule."""
    lines = []
    for n, by_count in result.get("several_references", {}).get("references", {}).items():
        rules = "; ".join(f"{rule} {m['precision']:.3f} / {m['recall']:.3f}" for rule, m in by_count["rules"].items())
        lines.append(f"\n  FindMe from {n} reference(s), {by_count['people']} people, precision / recall: {rules}")
    return "".join(lines)


def evaluate(client: FaceSearchClient, args: argparse.Namespace) -> int:
    try:
        result = evaluate_dataset(client, args.dataset, lambda line: print(line, file=sys.stderr))
    except EvaluationError as error:
        raise UsageError(str(error)) from None
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
