"""The evaluation's outputs: ``metrics.json``, ``report.md`` (Table-1 style), ``metrics.png``
(one bar panel per metric) and ``sheets/`` (per identity: reference | SD edit | generators, by
view). Images are drawn with Pillow."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jaxhead.utils.params_io import write_text_atomic

# metric -> (column title, higher is better, format, ASCII title for the chart's bitmap font)
COLUMNS = {
    "fid": ("FID↓", False, "{:.1f}", "FID (lower is better)"),
    "kid": ("KID↓", False, "{:.4f}", "KID (lower is better)"),
    "clip": ("CLIP↑", True, "{:.3f}", "CLIP similarity (higher)"),
    "clip_score": ("CLIP-S↑", True, "{:.3f}", "CLIP-S (higher is better)"),
    "id": ("ID↑", True, "{:.3f}", "ID (higher is better)"),
    "depth": ("ΔD↓", False, "{:.4f}", "dD (lower is better)"),
    "diversity": ("Div↑", True, "{:.3f}", "Diversity LPIPS (higher)"),
}


def best_rows(results: dict[str, dict[str, Any]], metric: str, reference: str) -> set[str]:
    """Names of the generators with the best finite value of ``metric``, among the
    non-reference generators (the reference trivially wins ID and ΔD), or among all when the
    reference is alone."""
    higher = COLUMNS[metric][1]
    cands = {g: r[metric]["value"] for g, r in results.items()
             if metric in r and math.isfinite(r[metric]["value"])}
    others = {g: v for g, v in cands.items() if g != reference}
    cands = others or cands
    if not cands:
        return set()
    best = max(cands.values()) if higher else min(cands.values())
    return {g for g, v in cands.items() if v == best}


def markdown_table(results: dict[str, dict[str, Any]], metrics: Sequence[str],
                   reference: str) -> str:
    cols = [m for m in COLUMNS if m in metrics]
    bold = {m: best_rows(results, m, reference) for m in cols}
    lines = ["| generator | " + " | ".join(COLUMNS[m][0] for m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for g, r in results.items():
        cells = []
        for m in cols:
            if m not in r:
                cells.append("—")
                continue
            s = COLUMNS[m][2].format(r[m]["value"])
            cells.append(f"**{s}**" if g in bold[m] else s)
        name = f"{g} (reference)" if g == reference else g
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(workdir: Path, *, results: dict[str, dict[str, Any]], info: dict[str, Any],
                 reference: str, metrics: Sequence[str], notes: str = "") -> list[Path]:
    """metrics.json, report.md and metrics.png in ``workdir``; ``notes`` (markdown) ends
    report.md."""
    workdir.mkdir(parents=True, exist_ok=True)
    payload = {**info, "reference": reference, "generators": results}
    write_text_atomic(workdir / "metrics.json", json.dumps(payload, indent=1, default=float))
    n, v = info["n_identities"], info["views"]
    text = [
        f"# Evaluation: {info['prompt']!r}",
        "",
        f"{n} identities ({info['identities']}), views yaw/pitch "
        + ", ".join(f"({y:.2f}, {p:.2f})" for y, p in zip(v["yaw"], v["pitch"], strict=True))
        + f"; SD edits of views {list(v['edit'])} ({info['edit']}).",
        "",
        markdown_table(results, metrics, reference),
        "",
        "Best value per column in bold (among the non-reference generators). FID / KID: SD "
        "edits of the reference renders (set #1) vs the generator's renders (set #2) of the "
        "edited views; CLIP: paired CLIP image cosine #1/#2; CLIP-S: 2.5 max(cos, 0) of #2 with "
        "the prompt; ID: ArcFace cosine of #2 with the reference renders (#3) over all views; "
        "ΔD: masked RMS depth difference #2/#3 over all views, in units of the ray range; Div: "
        "mean pairwise LPIPS of #2's front views across identities. FID on few images is "
        "biased high: compare generators on the same identities only.",
        "",
        "![metrics](metrics.png)",
        "",
    ] + ([notes, ""] if notes else [])
    write_text_atomic(workdir / "report.md", "\n".join(text))
    chart = bar_chart(results, [m for m in COLUMNS if m in metrics], reference)
    _save_png(chart, workdir / "metrics.png")
    return [workdir / "metrics.json", workdir / "report.md", workdir / "metrics.png"]


def _save_png(img: Image.Image | np.ndarray, path: Path) -> None:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def bar_chart(results: dict[str, dict[str, Any]], metrics: Sequence[str], reference: str,
              *, panel: tuple[int, int] = (220, 200)) -> Image.Image:
    """One panel per metric, one bar per generator (legend below)."""
    gens = list(results)
    pw, ph = panel
    cols = min(4, max(1, len(metrics)))
    rows = -(-len(metrics) // cols)
    legend_h = 18 * len(gens) + 10
    img = Image.new("RGB", (cols * pw, rows * ph + legend_h), "white")
    d = ImageDraw.Draw(img)
    for k, m in enumerate(metrics):
        x0, y0 = (k % cols) * pw, (k // cols) * ph
        _, _, fmt, title = COLUMNS[m]
        d.text((x0 + 8, y0 + 4), title, fill="black")
        vals = [results[g][m]["value"] if m in results[g] else float("nan") for g in gens]
        finite = [v for v in vals if math.isfinite(v)]
        top = max([abs(v) for v in finite] + [1e-12])
        base_y, h = y0 + ph - 24, ph - 50
        d.line([(x0 + 8, base_y), (x0 + pw - 8, base_y)], fill="black")
        bw = (pw - 20) // max(len(gens), 1)
        for i, v in enumerate(vals):
            bx = x0 + 12 + i * bw
            if not math.isfinite(v):
                d.text((bx, base_y - 12), "n/a", fill="gray")
                continue
            bh = int(h * abs(v) / top)
            d.rectangle([bx, base_y - bh, bx + bw - 6, base_y], fill=PALETTE[i % len(PALETTE)])
            d.text((bx, base_y + 4), fmt.format(v), fill="black")
    for i, g in enumerate(gens):
        y = rows * ph + 5 + 18 * i
        d.rectangle([10, y, 22, y + 12], fill=PALETTE[i % len(PALETTE)])
        d.text((28, y), g + (" (reference)" if g == reference else ""), fill="black")
    return img


def _tile(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))


def write_sheets(out_dir: Path, names: Sequence[str], *, reference: str,
                 renders: dict[str, np.ndarray], edits: np.ndarray | None,
                 edit_views: Sequence[int], views: Sequence[int], tile: int = 256) -> list[Path]:
    """Per identity: one row per image set (reference, SD edit, each other generator), one
    column per view in ``views`` (front and side); a missing edit is a grey tile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label_w = 150
    paths = []
    rows = [reference] + (["SD edit"] if edits is not None else []) + [
        g for g in renders if g != reference]
    for i, name in enumerate(names):
        sheet = Image.new("RGB", (label_w + tile * len(views), tile * len(rows)), "white")
        d = ImageDraw.Draw(sheet)
        for r, row in enumerate(rows):
            d.text((8, r * tile + tile // 2), row, fill="black")
            for c, v in enumerate(views):
                if row == "SD edit":
                    img = (edits[i, list(edit_views).index(v)] if v in edit_views else
                           np.full((tile, tile, 3), 200, np.uint8))
                else:
                    img = renders[row][i, v]
                sheet.paste(Image.fromarray(_tile(img, tile)), (label_w + c * tile, r * tile))
        p = out_dir / f"{name}.png"
        _save_png(sheet, p)
        paths.append(p)
    return paths
