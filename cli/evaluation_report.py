"""The HTML pages of ``facesearch eval``: one self-contained file each (figures as inline
SVG, thumbnails as JPEG data URIs), for one result or several side by side."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from cli.contact_sheet import thumbnail_with_box

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
SAME, DIFFERENT = "#2ca02c", "#d62728"
WIDTH, HEIGHT, MARGIN = 460, 300, 48

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #f7f7f7; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; background: #fff; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 16px; }}
figure {{ margin: 0; background: #fff; padding: 6px; box-shadow: 0 1px 3px #0003; }}
.pairs {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.pair {{ background: #fff; padding: 6px; box-shadow: 0 1px 3px #0003; font-size: 12px; max-width: 340px; }}
.pair img {{ height: 120px; margin-right: 4px; }}
.score {{ font-weight: bold; font-size: 14px; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def _svg(content: str, title: str) -> str:
    return (
        f'<figure><svg width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">'
        f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>'
        f'<rect x="{MARGIN}" y="{MARGIN / 2}" width="{WIDTH - 1.5 * MARGIN}" height="{HEIGHT - 1.5 * MARGIN}" '
        f'fill="none" stroke="#888"/>{content}</svg></figure>'
    )


def _x(fraction: float) -> float:
    return MARGIN + fraction * (WIDTH - 1.5 * MARGIN)


def _y(fraction: float) -> float:
    return HEIGHT - MARGIN + fraction * -(HEIGHT - 1.5 * MARGIN)


def roc_figure(results: list[dict]) -> str:
    """The ROC curves (VAL against FAR, FAR on a log scale) of the results, one colour each."""
    smallest = min(1 / r["verification"]["pairs"]["different_person"] for r in results)
    low = math.floor(math.log10(smallest))

    def fx(far: float) -> float:
        return _x((math.log10(max(far, 10**low)) - low) / -low)

    parts = []
    for exponent in range(low, 1):
        x = fx(10**exponent)
        parts.append(f'<line x1="{x:.1f}" y1="{_y(0):.1f}" x2="{x:.1f}" y2="{_y(1):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{_y(0) + 14:.1f}" text-anchor="middle">1e{exponent}</text>')
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{MARGIN - 4}" y="{_y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">FAR (log scale)</text>')
    parts.append(
        f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">VAL</text>'
    )
    for number, result in enumerate(results):
        colour = COLOURS[number % len(COLOURS)]
        points = " ".join(f"{fx(far):.1f},{_y(val):.1f}" for far, val in result["verification"]["roc"])
        parts.append(f'<polyline class="roc" points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        at = result["verification"]["at_threshold"]
        parts.append(f'<circle cx="{fx(at["far"]):.1f}" cy="{_y(at["val"]):.1f}" r="4" fill="{colour}"/>')
        label = f"{result['model']['id']} (AUC {result['verification']['roc_auc']:.4f})"
        parts.append(
            f'<text x="{_x(0.35):.1f}" y="{_y(0.1) + 14 * number:.1f}" fill="{colour}">{html.escape(label)}</text>'
        )
    return _svg("".join(parts), "ROC (dot: the configured threshold)")


def histogram_figure(result: dict) -> str:
    """Same- and different-person similarities (each as a share of its pairs), with the
    configured threshold marked."""
    h = result["verification"]["histograms"]
    edges, low, high = h["edges"], h["edges"][0], h["edges"][-1]
    span = (high - low) or 1.0
    shares = {}
    for kind in ("same_person", "different_person"):
        total = sum(h[kind]) or 1
        shares[kind] = [c / total for c in h[kind]]
    top = max(max(s) for s in shares.values()) or 1.0

    def fx(value: float) -> float:
        return _x((value - low) / span)

    parts = []
    for kind, colour in (("different_person", DIFFERENT), ("same_person", SAME)):
        for i, share in enumerate(shares[kind]):
            if share:
                x0, x1, y = fx(edges[i]), fx(edges[i + 1]), _y(share / top)
                parts.append(
                    f'<rect class="bar" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                    f'height="{_y(0) - y:.1f}" fill="{colour}" fill-opacity="0.45"/>'
                )
    threshold = result["configured_threshold"]
    x = fx(min(max(threshold, low), high))
    parts.append(
        f'<line class="threshold" x1="{x:.1f}" y1="{_y(0):.1f}" x2="{x:.1f}" y2="{_y(1):.1f}" '
        'stroke="#000" stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{x + 3:.1f}" y="{_y(1) + 12:.1f}">threshold {threshold:.4f}</text>')
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text x="{fx(value):.1f}" y="{_y(0) + 14:.1f}" text-anchor="middle">{value:.2f}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">cosine similarity</text>')
    parts.append(f'<text x="{_x(0.02):.1f}" y="{_y(0.92):.1f}" fill="{SAME}">same person</text>')
    parts.append(f'<text x="{_x(0.02):.1f}" y="{_y(0.84):.1f}" fill="{DIFFERENT}">different people</text>')
    return _svg("".join(parts), f"Similarities, {result['model']['id']} (share of each kind of pair)")


def _rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    rows = []

    def row(name, get, form="{:.4f}"):
        values = []
        for r in results:
            try:
                values.append(form.format(get(r)))
            except (KeyError, IndexError):
                values.append("-")
        rows.append((name, values))

    row("model version", lambda r: r["model"]["version"], "{}")
    row("photos (with faces found)", lambda r: f"{r['photos']} ({r['photos_with_faces']})", "{}")
    row(
        "same-person / different-person pairs",
        lambda r: "{same_person} / {different_person}".format(**r["verification"]["pairs"]),
        "{}",
    )
    row("ROC AUC", lambda r: r["verification"]["roc_auc"])
    row("best accuracy", lambda r: r["verification"]["best_accuracy"]["accuracy"])
    row("threshold of the best accuracy", lambda r: r["verification"]["best_accuracy"]["threshold"])
    row("configured threshold", lambda r: r["configured_threshold"])
    row("accuracy at the configured threshold", lambda r: r["verification"]["at_threshold"]["accuracy"])
    row("FAR at the configured threshold", lambda r: r["verification"]["at_threshold"]["far"], "{:.5f}")
    row("VAL at the configured threshold", lambda r: r["verification"]["at_threshold"]["val"])
    for i, far in enumerate((1e-2, 1e-3)):
        row(f"VAL at FAR {far:g}", lambda r, i=i: r["verification"]["val_at_far"][i]["val"])
        row(f"threshold for FAR {far:g}", lambda r, i=i: r["verification"]["val_at_far"][i]["threshold"])
    for kind, label in (("same_person", "same-person"), ("different_person", "different-person")):
        row(
            f"{label} similarity: mean ± std",
            lambda r, k=kind: "{mean:.3f} ± {std:.3f}".format(**r["verification"][f"{k}_similarity"]),
            "{}",
        )
        row(
            f"{label} similarity: min … max",
            lambda r, k=kind: "{min:.3f} … {max:.3f}".format(**r["verification"][f"{k}_similarity"]),
            "{}",
        )
    row("identification probes", lambda r: r["identification"]["probes"], "{}")
    for k in ("1", "5", "10"):
        row(f"identification top-{k}", lambda r, k=k: r["identification"]["top_k"][k])
    row("FindMe people", lambda r: len(r["findme"]["people"]), "{}")
    for measure in ("precision", "recall", "f1"):
        row(f"FindMe {measure} (overall)", lambda r, m=measure: r["findme"]["overall"][m])
    several = results[0].get("several_references", {}).get("references", {})
    for n, by_count in several.items():
        for rule in by_count["rules"]:
            row(
                f"FindMe from {n} reference(s), {rule}: precision / recall",
                lambda r, n=n, rule=rule: "{precision:.3f} / {recall:.3f}".format(
                    **r["several_references"]["references"][n]["rules"][rule]
                ),
                "{}",
            )
    return rows


def measures_table(results: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(r['model']['id'])}</th>" for r in results)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{html.escape(v)}</td>' for v in values)}</tr>"
        for name, values in _rows(results)
    )
    return f'<table class="measures"><tr><th>measure</th>{head}</tr>{body}</table>'


def findme_table(result: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(person)}</td><td>{p['precision']:.3f}</td><td>{p['recall']:.3f}</td>"
        f"<td>{p['f1']:.3f}</td><td>{p['hits']}</td><td>{p['found']}</td><td>{p['relevant']}</td>"
        f"<td>{html.escape(p['enrolled_from'])}{'' if p.get('enrolled', True) else ' (no usable face)'}</td></tr>"
        for person, p in sorted(result["findme"]["people"].items())
    )
    return (
        "<table><tr><th>person</th><th>precision</th><th>recall</th><th>F1</th><th>right</th><th>found</th>"
        f"<th>labelled</th><th>enrolled from</th></tr>{rows}</table>"
    )


def _thumbnail(face: dict) -> str:
    try:
        data = base64.b64encode(thumbnail_with_box(Path(face["path"]))).decode()
    except (OSError, ValueError, KeyError) as error:
        return f"<span>(cannot show: {html.escape(error.__class__.__name__)})</span>"
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(face["photo"])}">'


def mistakes_section(result: dict) -> str:
    parts = []
    for kind, title in (
        ("different_person", "Different people scored most alike"),
        ("same_person", "The same person scored least alike"),
    ):
        tiles = "".join(
            f'<div class="pair"><div>{_thumbnail(m["a"])}{_thumbnail(m["b"])}</div>'
            f'<span class="score">{m["similarity"]:.3f}</span> {html.escape(m["a"]["photo"])} '
            f"(face {m['a']['face']}) · {html.escape(m['b']['photo'])} (face {m['b']['face']})</div>"
            for m in result["worst_mistakes"][kind]
        )
        parts.append(f'<h3>{title}</h3><div class="pairs">{tiles}</div>')
    return "".join(parts)


def report_page(result: dict) -> str:
    body = (
        f"<p>{html.escape(result['dataset'])}, {result['evaluated_at']}: {result['faces']} faces found in "
        f"{result['photos_with_faces']} of {result['photos']} photos.</p>"
        f"<h2>Measures</h2>{measures_table([result])}"
        f'<div class="figures">{roc_figure([result])}{histogram_figure(result)}</div>'
        f"<h2>FindMe per person</h2>{findme_table(result)}"
        f"<h2>Worst mistakes</h2>{mistakes_section(result)}"
    )
    return _PAGE.format(title=html.escape(f"Recognition evaluation: {result['model']['id']}"), body=body)


def comparison_page(results: list[dict]) -> str:
    if not results:
        raise ValueError("no results to compare")
    histograms = "".join(histogram_figure(r) for r in results)
    datasets = sorted({r["dataset"] for r in results})
    body = (
        f"<p>Data: {html.escape(', '.join(datasets))}.</p><h2>Measures</h2>{measures_table(results)}"
        f'<div class="figures">{roc_figure(results)}{histograms}</div>'
    )
    names = " vs ".join(r["model"]["id"] for r in results)
    return _PAGE.format(title=html.escape(f"Recognition evaluation: {names}"), body=body)
