"""Stacked bar charts as inline SVG, drawn on the server: no script, no library, nothing fetched."""

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 200  # the SVG's viewBox; the stylesheet scales it to the page
LEFT, BOTTOM, TOP = 34, 22, 8  # room for the value axis, the labels and the top


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # the CSS class suffix: the status or outcome
    title: str  # shown on hover: "2026-11-30 · completed: 4"


@dataclass(frozen=True)
class Chart:
    """What the chart macro draws: bars, value-axis ticks (y, value), x labels (x, text)."""

    title: str
    bars: list[Bar]
    ticks: list[tuple[float, int]]
    labels: list[tuple[float, str]]
    legend: list[tuple[str, int]]  # series and its total
    total: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = HEIGHT - BOTTOM


def stacked_bars(title: str, labels: list[str], series: dict[str, list[int]], every: int = 1, short=str) -> Chart:
    """A chart of one stacked bar per label, one segment per series (drawn in `series`' order),
    scaled to the tallest bar; every `every`-th label is shown, cut by `short` (a function of
    the label, e.g. lambda day: day[5:])."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = max(max(totals, default=0), 1)
    plot_height, slot = HEIGHT - BOTTOM - TOP, (WIDTH - LEFT) / max(len(labels), 1)
    scale = plot_height / top
    bars = []
    for i, label in enumerate(labels):
        base = HEIGHT - BOTTOM
        for name, values in series.items():
            if values[i]:
                height = values[i] * scale
                base -= height
                x = LEFT + i * slot + slot * 0.1
                bars.append(Bar(round(x, 1), round(base, 1), round(slot * 0.8, 1), round(height, 1), name,
                                f"{label} · {name}: {values[i]}"))  # fmt: skip
    ticks = sorted({(round(HEIGHT - BOTTOM - value * scale, 1), value) for value in (0, top // 2, top)})
    shown = [(round(LEFT + (i + 0.5) * slot, 1), short(label)) for i, label in enumerate(labels) if i % every == 0]
    legend = [(name, sum(values)) for name, values in series.items()]
    return Chart(title, bars, ticks, shown, legend, sum(totals))
