"""Line charts as inline SVG for the HTML page (``bench.report.html``): a few hundred bytes per curve, the same bytes
on every machine (no plotting library, no fonts embedded, no ids drawn at random), so a committed page regenerates
byte for byte and a grid of a hundred runs stays small."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Distinguishable for the common kinds of colour blindness (Okabe and Ito), in the order curves are drawn.
COLORS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")
WIDTH, HEIGHT = 480, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40  # the plot area's margins: tick labels left, axis label below


@dataclass(frozen=True)
class Series:
    """One curve: its legend label and its points; a NaN y leaves a gap. ``errors`` (one per point, or none): a
    band of ± that much around the curve."""
    label: str
    points: tuple[tuple[float, float], ...]
    errors: tuple[float, ...] = ()


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2 or 5 times a power of ten apart) covering lo..hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    if out[-1] < hi:
        out.append(round(v, 12))
    return out


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def _label(v: float) -> str:
    return f"{v:.6g}"


def chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
          xticks: Sequence[tuple[float, str]] | None = None) -> str:
    """An SVG line chart (markers on each point, the legend under it, two curves a row) that scales to
    its container's width. ``xticks`` labels x positions (a swept hyperparameter's values); else round numbers."""
    ys = [y + sign * e for s in series for (_, y), e in zip(s.points, s.errors or [0.0] * len(s.points))
          for sign in (-1, 1) if math.isfinite(y + e)]
    xs = [x for s in series for x, _ in s.points]
    if not ys:
        return ""
    y_ticks = ticks(min(ys), max(ys)) if max(ys) > min(ys) else [min(ys) - 1, min(ys), min(ys) + 1]
    x_ticks = list(xticks) if xticks is not None else [(v, _label(v)) for v in ticks(min(xs), max(xs))]
    x0, x1 = min([v for v, _ in x_ticks] + xs), max([v for v, _ in x_ticks] + xs)
    y0, y1 = y_ticks[0], y_ticks[-1]
    x1 = x1 if x1 > x0 else x0 + 1
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    legend_rows = math.ceil(len(series) / 2)  # one curve too: its label says which accuracy it is
    height = HEIGHT + 18 * legend_rows
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for v in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{_fmt(py(v))}" y2="{_fmt(py(v))}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 4}" y="{_fmt(py(v) + 4)}" text-anchor="end">{_label(v)}</text>')
    for v, lab in x_ticks:
        parts.append(f'<text x="{_fmt(px(v))}" y="{TOP + ph + 15}" text-anchor="middle">{escape(lab)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2:.1f}" y="{TOP + ph + 32}" text-anchor="middle">{escape(xlabel)}</text>'
                 f'<text transform="translate(12 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f'{escape(ylabel)}</text>')
    for i, s in enumerate(series):
        parts.append(_curve(s, COLORS[i % len(COLORS)], px, py))
        if legend_rows:
            lx, ly = LEFT + (i % 2) * pw / 2, HEIGHT + 18 * (i // 2) + 4
            parts.append(f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{ly}" y2="{ly}" stroke="{COLORS[i % len(COLORS)]}"'
                         f' stroke-width="2"/><text x="{lx + 22:.1f}" y="{ly + 4}">{escape(s.label)}</text>')
    return "".join(parts) + "</svg>"


def _curve(s: Series, color: str, px, py) -> str:
    """A polyline per unbroken stretch of finite points, and a marker on each point (alone it is all one sees)."""
    runs: list[list[str]] = [[]]
    marks = []
    for x, y in s.points:
        if not math.isfinite(y):
            runs.append([])
            continue
        runs[-1].append(f"{_fmt(px(x))},{_fmt(py(y))}")
        marks.append(f'<circle cx="{_fmt(px(x))}" cy="{_fmt(py(y))}" r="2.5"/>')
    lines = "".join(f'<polyline points="{" ".join(r)}" fill="none" stroke-width="2"/>' for r in runs if len(r) > 1)
    return (f'<g stroke="{color}" fill="{color}"><title>{escape(s.label)}</title>{_band(s, px, py)}{lines}'
            f'{"".join(marks)}</g>')


def _band(s: Series, px, py) -> str:
    """The ± band of a curve's errors: a light polygon along the top, back along the bottom."""
    pts = [(x, y, e) for (x, y), e in zip(s.points, s.errors) if math.isfinite(y) and math.isfinite(e) and e > 0]
    if len(pts) < 2:
        return ""
    edge = [f"{_fmt(px(x))},{_fmt(py(y + e))}" for x, y, e in pts]
    edge += [f"{_fmt(px(x))},{_fmt(py(y - e))}" for x, y, e in reversed(pts)]
    return f'<polygon points="{" ".join(edge)}" fill-opacity="0.15" stroke="none"/>'
