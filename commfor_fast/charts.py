"""What every chart the tool writes shares: a paper column's width, legible fonts, the files.

Charts go into papers, so each one is drawn `COLUMN_INCHES` wide (one column of a
two-column paper) with no text below `FONT_PT` points: printed at one column's width
every label stays at 8 pt or more (`legibility_problems` checks a figure). They are written as PNG
at `CHART_DPI` (990 pixels wide, for screens) and as PDF (vector, for LaTeX). Legends sit
outside the axes, so they never cover data.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from commfor_fast.fileio import atomic_write
from commfor_fast.report import short_name

COLUMN_INCHES = 3.3  # one column of a two-column paper
FONT_PT = 8.0  # the smallest text, at COLUMN_INCHES wide
TITLE_PT = 9.0
CHART_DPI = 300
NAME_CHARS = 24  # a generator's name on a chart (shortened in the middle): about 1.4 inches at 8 pt


def chart_name(name: str) -> str:
    """A generator's name as chart text: printable, shortened to `NAME_CHARS` in the middle,
    its `$` escaped (two of them would start matplotlib's math mode, which can fail to parse)."""
    return short_name(name, NAME_CHARS).replace("$", r"\$")


def column_figure(height: float) -> Figure:
    """An empty figure one column wide and `height` inches tall, laid out to fit its text."""
    return Figure(figsize=(COLUMN_INCHES, height), layout="constrained")


def style_axes(ax: Axes) -> None:
    """Tick labels at `FONT_PT`, a light grid, no top or right frame."""
    ax.tick_params(labelsize=FONT_PT)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def legibility_problems(fig: Figure, at_inches: float = COLUMN_INCHES) -> list[str]:
    """What is wrong with the texts of `fig` printed `at_inches` wide: each one smaller than
    `FONT_PT` there, or cut off at the figure's edge; empty when all are legible."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    scale = at_inches / fig.get_figwidth()
    problems = []
    for t in fig.findobj(Text):
        if not (t.get_visible() and t.get_text().strip()):
            continue
        if t.get_fontsize() * scale < FONT_PT - 1e-9:
            problems.append(f"{t.get_text()!r} at {t.get_fontsize() * scale:.1f} pt")
        box = t.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > fig.bbox.x1 + 0.5 or box.y1 > fig.bbox.y1 + 0.5:
            problems.append(f"{t.get_text()!r} cut off at the figure's edge")
    return problems


def save_chart(fig: Figure, path: Path) -> tuple[Path, Path]:
    """`fig` as `path` with .png (CHART_DPI) and .pdf suffixes, each written atomically."""
    png, pdf = path.with_suffix(".png"), path.with_suffix(".pdf")
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=CHART_DPI)
    with atomic_write(pdf) as f:
        fig.savefig(f, format="pdf")
    return png, pdf
