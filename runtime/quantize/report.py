"""The quantizer's report: SQNR in dB and the per-layer table ``rram quantize`` prints."""
from __future__ import annotations

import math


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def format_report(report: dict) -> str:
    """The per-layer table printed by ``rram quantize``."""
    dev = report["device"]
    head = (f"device {dev['name']}: {dev['tile_rows']}x{dev['tile_cols']} tiles, {dev['bits_per_cell']} "
            f"bit(s)/cell x {dev['cells_per_weight']} slice(s), {dev['encoding']}, "
            f"{dev['scale_granularity']} scales; weights stored as {report['weight_dtype']}")
    lines = [head, f"{'node':<40} {'op':<7} {'matrix':>11} {'tiles':>5} {'cells':>10} {'util':>6} {'SQNR dB':>8}"]

    def sq(v):
        return "inf" if v is None or v == math.inf else f"{v:.1f}"

    for r in report["layers"]:
        name = r["node"] if len(r["node"]) <= 40 else "..." + r["node"][-37:]
        lines.append(f"{name:<40} {r['op_type']:<7} {r['matrix_shape'][0]:>5}x{r['matrix_shape'][1]:<5} "
                     f"{r['tiles']:>5} {r['cells']:>10} {100 * r['utilisation']:>5.1f}% {sq(r['sqnr_db']):>8}")
    t = report["total"]
    lines.append(f"{'total (' + str(t['layers']) + ' layers)':<40} {'':<7} {'':>11} {t['tiles']:>5} "
                 f"{t['cells']:>10} {100 * t['utilisation']:>5.1f}% {sq(t['sqnr_db']):>8}")
    if report.get("skipped"):
        lines.append(f"not mapped: {len(report['skipped'])} node(s) (see report.json)")
    return "\n".join(lines)
