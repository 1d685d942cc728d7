"""A small self-contained SVG line-plot helper (no matplotlib here): one or more panels side by
side, each with axes, ticks, tick labels, axis labels, a title, a legend and one polyline per
series (optionally dashed, optionally with point markers).

    import svgplot
    svgplot.save("fig.svg", [svgplot.Panel("loss", "step", "nats", [
        svgplot.Series("seed 1", xs, ys), svgplot.Series("seed 2", xs2, ys2, dash=True)])],
        title="...")
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: Optional[str] = None
    dash: bool = False
    markers: bool = False


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: List[Series] = field(default_factory=list)
    ylim: Optional[tuple] = None
    xlim: Optional[tuple] = None
    legend: str = "tr"  # where the legend sits inside the plot: tr, tl, br, bl (series labelled "" are left out)


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks, step


def fmt(v, step):
    if abs(v) < 1e-9 * max(step, 1e-300):
        v = 0.0
    if step >= 1 and abs(v - round(v)) < 1e-9:
        return "%d" % round(v)
    digits = max(0, -int(math.floor(math.log10(step))) + (0 if step * 10 ** -math.floor(math.log10(step)) in (1, 2, 5) else 1))
    return "%.*f" % (digits, v)


def _panel(p, x0, y0, w, h, out):
    ml, mr, mt, mb = 62, 12, 28, 46  # margins inside the panel box
    pw, ph = w - ml - mr, h - mt - mb
    pts = [(x, y) for s in p.series for x, y in zip(s.xs, s.ys) if y is not None and math.isfinite(y)]
    xs = [x for x, _ in pts] or [0, 1]
    ys = [y for _, y in pts] or [0, 1]
    xlo, xhi = p.xlim or (min(xs), max(xs))
    ylo, yhi = p.ylim or (min(ys), max(ys))
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    elif not p.ylim:
        pad = 0.05 * (yhi - ylo)
        ylo, yhi = ylo - pad, yhi + pad
    xt, xstep = nice_ticks(xlo, xhi)
    yt, ystep = nice_ticks(ylo, yhi)
    if not p.xlim:
        xlo, xhi = min(xlo, xt[0]), max(xhi, xt[-1])
    if not p.ylim:
        ylo, yhi = min(ylo, yt[0]), max(yhi, yt[-1])
    X = lambda x: x0 + ml + (x - xlo) / (xhi - xlo or 1) * pw
    Y = lambda y: y0 + mt + ph - (y - ylo) / (yhi - ylo or 1) * ph
    out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" stroke="#333"/>' % (x0 + ml, y0 + mt, pw, ph))
    for t in xt:
        if xlo - 1e-9 <= t <= xhi + 1e-9:
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>' % (X(t), y0 + mt, X(t), y0 + mt + ph))
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>' % (X(t), y0 + mt + ph, X(t), y0 + mt + ph + 4))
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>' % (X(t), y0 + mt + ph + 16, fmt(t, xstep)))
    for t in yt:
        if ylo - 1e-9 <= t <= yhi + 1e-9:
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>' % (x0 + ml, Y(t), x0 + ml + pw, Y(t)))
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>' % (x0 + ml - 4, Y(t), x0 + ml, Y(t)))
            out.append('<text x="%.1f" y="%.1f" text-anchor="end">%s</text>' % (x0 + ml - 6, Y(t) + 4, fmt(t, ystep)))
    out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>' % (x0 + ml + pw / 2, y0 + 18, escape(p.title)))
    out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>' % (x0 + ml + pw / 2, y0 + h - 8, escape(p.xlabel)))
    out.append('<text transform="translate(%.1f,%.1f) rotate(-90)" text-anchor="middle">%s</text>' % (x0 + 14, y0 + mt + ph / 2, escape(p.ylabel)))
    out.append('<clipPath id="c%d"><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/></clipPath>' % (id(p), x0 + ml, y0 + mt, pw, ph))
    for i, s in enumerate(p.series):
        color = s.color or COLORS[i % len(COLORS)]
        seg = ["%.1f,%.1f" % (X(x), Y(y)) for x, y in zip(s.xs, s.ys) if y is not None and math.isfinite(y)]
        dash = ' stroke-dasharray="5,3"' if s.dash else ""
        out.append('<polyline clip-path="url(#c%d)" fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>' % (id(p), color, dash, " ".join(seg)))
        if s.markers:
            for q in seg:
                cx, cy = q.split(",")
                out.append('<circle cx="%s" cy="%s" r="2.5" fill="%s"/>' % (cx, cy, color))
    # legend, inside the plot at p.legend's corner
    shown = [(i, s) for i, s in enumerate(p.series) if s.label]
    wide = max((len(s.label) for _, s in shown), default=0) * 6.5 + 30
    tall = 14 * len(shown) + 6
    lx = x0 + ml + pw - 8 if p.legend[1] == "r" else x0 + ml + 8 + wide
    ly = y0 + mt + 8 if p.legend[0] == "t" else y0 + mt + ph - 8 - tall
    if shown:
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" fill-opacity="0.85" stroke="#bbb"/>' % (lx - wide, ly, wide, tall))
    for j, (i, s) in enumerate(shown):
        color = s.color or COLORS[i % len(COLORS)]
        yy = ly + 13 + 14 * j
        dash = ' stroke-dasharray="5,3"' if s.dash else ""
        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.6"%s/>' % (lx - wide + 5, yy - 4, lx - wide + 23, yy - 4, color, dash))
        out.append('<text x="%.1f" y="%.1f">%s</text>' % (lx - wide + 27, yy, escape(s.label)))


def save(path, panels, title="", panel_w=380, panel_h=300):
    top = 26 if title else 0
    W, H = panel_w * len(panels), panel_h + top
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="Helvetica, Arial, sans-serif" font-size="11">' % (W, H, W, H),
           '<rect width="100%" height="100%" fill="white"/>']
    if title:
        out.append('<text x="%.1f" y="18" text-anchor="middle" font-size="13" font-weight="bold">%s</text>' % (W / 2, escape(title)))
    for i, p in enumerate(panels):
        _panel(p, i * panel_w, top, panel_w, panel_h, out)
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
