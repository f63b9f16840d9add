"""A line chart as a standalone SVG, with no plotting library: benchmark plots are drawn from the same
run as their tables even where matplotlib is not installed (docs/ commits the result)."""

from __future__ import annotations

import math
from html import escape

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 50


def _nice_step(span: float) -> float:
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _frame(title: str, y1: float, step: float) -> list[str]:
    """The SVG's opening, its title, and the y grid from 0 to `y1` every `step`."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT + plot_w / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    tick = 0.0
    while tick <= y1 + 1e-9:
        y = TOP + plot_h - tick / y1 * plot_h
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    return out


def line_chart(
    x: list[int], series: dict[str, list[float]], *, title: str, xlabel: str, ylabel: str, log2_x: bool = True
) -> str:
    """Series of y values over the same x values; x on a log2 scale (concurrency levels)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    xs = [math.log2(v) if log2_x else float(v) for v in x]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    top = max(max(values) for values in series.values())
    step = _nice_step(top)
    y1 = math.ceil(top / step) * step

    def px(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return TOP + plot_h - v / y1 * plot_h

    out = _frame(title, y1, step)
    for value, xv in zip(x, xs, strict=True):
        out.append(f'<text x="{px(xv):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{value}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{escape(ylabel)}</text>'
    )
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{px(xv):.1f},{py(v):.1f}" for xv, v in zip(xs, values, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for xv, v in zip(xs, values, strict=True):
            out.append(f'<circle cx="{px(xv):.1f}" cy="{py(v):.1f}" r="3.5" fill="{colour}"/>')
        ly = TOP + 10 + 20 * i
        lx = WIDTH - RIGHT + 15
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 40}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(
    groups: list[str],
    series: dict[str, list[float | None]],
    *,
    title: str,
    ylabel: str,
    marks: list[float] | None = None,
) -> str:
    """Grouped bars: one group per label, one bar per series (None: no bar); `marks`, a dashed line
    across each group at that value (a target)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for vs in series.values() for v in vs if v is not None] + (marks or [])
    step = _nice_step(max(values))
    y1 = math.ceil(max(values) / step) * step
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.7 / len(series)

    def py(v: float) -> float:
        return TOP + plot_h - v / y1 * plot_h

    out = _frame(title, y1, step)
    for g, label in enumerate(groups):
        x0 = LEFT + g * group_w + group_w * 0.15
        cx = LEFT + (g + 0.5) * group_w
        out.append(f'<text x="{cx:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{escape(label)}</text>')
        for i, vs in enumerate(series.values()):
            v = vs[g]
            if v is None:
                continue
            x = x0 + i * bar_w
            colour = COLOURS[i % len(COLOURS)]
            bar = f'x="{x:.1f}" y="{py(v):.1f}" width="{bar_w * 0.9:.1f}" height="{py(0) - py(v):.1f}"'
            out.append(f'<rect {bar} fill="{colour}"/>')
            out.append(f'<text x="{x + bar_w * 0.45:.1f}" y="{py(v) - 4:.1f}" text-anchor="middle">{v:.2f}</text>')
        if marks is not None:
            y = py(marks[g])
            out.append(
                f'<line x1="{x0 - 4:.1f}" y1="{y:.1f}" x2="{x0 + len(series) * bar_w:.1f}" y2="{y:.1f}" '
                'stroke="#333" stroke-dasharray="4 3"/>'
            )
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2})">{escape(ylabel)}</text>'
    )
    legend = [*series, "target"] if marks is not None else list(series)
    for i, name in enumerate(legend):
        ly, lx = TOP + 10 + 20 * i, WIDTH - RIGHT + 15
        if name == "target" and marks is not None:
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="#333" stroke-dasharray="4 3"/>')
        else:
            out.append(f'<rect x="{lx}" y="{ly - 6}" width="20" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
        out.append(f'<text x="{lx + 25}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
