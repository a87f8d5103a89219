"""tools/benchmark.py --plot: img/s and peak memory against image size, one line per model (a resolution sweep).

Left: inference and training img/s (solid and dashed) on a log scale; right: peak memory of a step (MiB). Drawn
with matplotlib, the optional plot extra, without pyplot (no display, no global state); the file (.png, .svg or
.pdf) is written whole or not at all.
"""
import importlib.util
import os

from plot_runs import FORMATS

from sgconvnext.atomic import atomic_open

__all__ = ['check_plot_path', 'plot_sweep']


def check_plot_path(path: str) -> str:
    """The picture format of ``path`` by its extension; ValueError naming the choices otherwise."""
    ext = os.path.splitext(path)[1].lower().lstrip('.')
    if ext not in FORMATS:
        raise ValueError(f'the picture must end in {", ".join("." + f for f in FORMATS)}, got {path!r}')
    if importlib.util.find_spec('matplotlib') is None:
        raise ValueError('drawing needs matplotlib, an optional extra: pip install -r requirements-plot.txt')
    return ext


def plot_sweep(rows: list, path: str, conditions: str) -> None:
    """Draw benchmark rows (several --img-size values) into ``path``."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), layout='constrained')
    speed, memory = fig.subplots(1, 2)
    models = list(dict.fromkeys(r['model'] for r in rows))
    for i, model in enumerate(models):
        mine = sorted((r for r in rows if r['model'] == model), key=lambda r: r['img_size'])
        sizes = [r['img_size'] for r in mine]
        for mode, style in (('infer', '-'), ('train', '--')):
            if any(r.get(f'{mode}_img_s') for r in mine):
                speed.plot(sizes, [r.get(f'{mode}_img_s') for r in mine], style, marker='o', color=f'C{i}',
                           label=f'{model}, {"inference" if mode == "infer" else "training"}')
                memory.plot(sizes, [r.get(f'{mode}_peak_mb') for r in mine], style, marker='o', color=f'C{i}',
                            label=f'{model}, {"inference" if mode == "infer" else "training"}')
    speed.set(xlabel='image size (px)', ylabel='img/s', yscale='log', title=f'throughput ({conditions})')
    memory.set(xlabel='image size (px)', ylabel='MiB', title='peak memory of one step')
    for ax in (speed, memory):
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format=check_plot_path(path), dpi=110)
