"""The sweep's figures (matplotlib, written as PNG and PDF by ``lcc.reduce``).

- ``kl_vs_position``: one panel per compressor (per model/data too when a sweep has several), colour = level,
  line style = ctx; octave-bin means with ±SE bands against position on a log2 axis (1, 2, 4 … 32k); the
  y-axis is shared by all panels.
- ``sensitivity``: mean KL and the late KL slope against ctx, one column per compressor, colour = level,
  error bars = ±SE across documents.
Colours: the levels of a compressor are ordered by their mean KL over the sweep (mild → severe) and take
evenly spaced colours of one sequential map, in both figures alike.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lcc.io import atomic_write
from lcc.names import FIG_CURVE, FIG_SENSITIVITY, ctx_label

LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2))]
PANEL_KEYS = ["model", "data", "compressor"]


def pos_label(p: float) -> str:
    p = int(round(p))
    return f"{p // 1024}k" if p >= 1024 and p % 1024 == 0 else str(p)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def panels(df: pd.DataFrame) -> list[tuple[tuple, str, pd.DataFrame]]:
    """(key, title, rows) per panel: one per compressor; model and data join the key (and the title) only
    when the sweep has more than one of them."""
    keys = [k for k in PANEL_KEYS if k == "compressor" or df[k].nunique() > 1]
    out = []
    for key, rows in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((key, " / ".join(str(k) for k in key), rows))
    return out


def level_colors(df: pd.DataFrame) -> dict[tuple, tuple]:
    """(compressor, level) -> colour: a compressor's levels ordered by their mean KL (mild -> severe)."""
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    out = {}
    for comp, rows in df.groupby("compressor"):
        order = rows.groupby("level")[FIG_SENSITIVITY[0].key].mean().sort_values(kind="stable").index.tolist()
        n = len(order)
        for i, lev in enumerate(order):
            out[(comp, lev)] = cmap(0.05 + 0.8 * i / (n - 1) if n > 1 else 0.3)
    return out


def ctx_styles(ctxs) -> dict[int, object]:
    return {c: LINESTYLES[i % len(LINESTYLES)] for i, c in enumerate(sorted(set(int(c) for c in ctxs)))}


def log2_axis(ax, lo: float, hi: float, label: bool = True) -> None:
    """x on a log2 scale from the power of two at or below ``lo`` to the one at or above ``hi``,
    ticks at every power of two, labelled 1, 2, 4, … 512, 1k, 2k, … (every other one when crowded)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    k0, k1 = math.floor(math.log2(max(lo, 1))), math.ceil(math.log2(max(hi, 2)))
    ticks = [2.0 ** k for k in range(k0, k1 + 1)]
    ax.set_xscale("log", base=2)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    step = 1 if len(ticks) <= 9 else 2
    ax.set_xticklabels([pos_label(t) if (i % step == 0 or i == len(ticks) - 1) and label else ""
                        for i, t in enumerate(ticks)], fontsize=8)


def log_y_axis(ax) -> None:
    """Log y with plain-number labels (0.05, 0.1, 0.2 ... not 5x10^-2); more labelled ticks per decade when
    the data span few decades; linear when the range is too narrow for two labelled log ticks (every axis
    sharing ``ax``'s y follows it)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")  # limits from the positive values alone
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo)
    options = [(1.0,), (1.0, 3.0), (1.0, 2.0, 3.0, 5.0), tuple(range(1, 10))]
    start = 0 if decades > 4 else 1 if decades > 1.5 else 2  # sparser labels over many decades
    for subs in options[start:]:
        inside = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                  for m in subs if lo <= m * 10.0 ** k <= hi]
        if len(inside) >= (3 if len(subs) < 9 else 2):
            break
    else:
        ax.set_yscale("linear")  # a narrow range: linear ticks say more
        ax.set_ylim(lo, hi)
        return
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=[x for x in range(1, 10) if x not in subs]))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig, path_stem: Path) -> list[Path]:
    written = []
    for fmt, dpi in (("png", 150), ("pdf", None)):
        path = path_stem.with_suffix(f".{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt, dpi=dpi: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
        written.append(path)
    return written


def _grid(n: int, width: float, height: float, sharey: bool):
    plt = _plt()
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.4), sharey=sharey,
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def _subtitle(df: pd.DataFrame) -> str:
    parts = [f"{k}: {', '.join(sorted(map(str, df[k].unique())))}" for k in ("model", "data") if df[k].nunique() == 1]
    return "; ".join(parts)


def kl_vs_position(bins: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``."""
    fig = kl_vs_position_figure(bins, jobs)
    out = _save(fig, stem)
    _plt().close(fig)
    return out


def sensitivity(jobs: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``."""
    fig = sensitivity_figure(jobs)
    out = _save(fig, stem)
    _plt().close(fig)
    return out


def kl_vs_position_figure(bins: pd.DataFrame, jobs: pd.DataFrame):
    """``bins``: the tidy file (one row per job x octave bin); ``jobs``: one row per finished job."""
    plt = _plt()
    from matplotlib.lines import Line2D

    m, se = FIG_CURVE.key, FIG_CURVE.se
    bins = bins.assign(x=2.0 ** bins.log2_pos)
    colors = level_colors(jobs)
    styles = ctx_styles(bins.ctx)
    log_y = bool((bins[m] > 0).any())
    groups = panels(bins)
    fig, axes = _grid(len(groups), 4.4, 3.4, sharey=True)
    for ax, (key, title, rows) in zip(axes.ravel(), groups):
        comp = key[-1]
        handles = {}
        for (lev, ctx, job), r in rows.groupby(["level", "ctx", "job"], sort=False):
            r = r.sort_values("x")
            c = colors.get((comp, lev), "k")
            y = r[m].to_numpy(dtype=float)
            e = r[se].fillna(0).to_numpy(dtype=float)
            if log_y and not (y > 0).any():
                continue
            line, = ax.plot(r.x, y, color=c, ls=styles[int(ctx)], marker="o", ms=2.5, lw=1.3)
            lo = np.clip(y - e, y * 0.02, None) if log_y else y - e
            ax.fill_between(r.x, lo, y + e, color=c, alpha=0.18, lw=0)
            handles.setdefault(lev, line)
        if log_y and not (rows[m] > 0).any():
            ax.text(0.5, 0.5, "KL = 0 at every position\n(identical to the dense model)", ha="center",
                    va="center", transform=ax.transAxes, fontsize=8, color="0.3")
        order = [lev for (cc, lev) in colors if cc == comp and lev in handles]
        if order:
            ax.legend([Line2D([], [], color=colors[(comp, lev)], lw=2) for lev in order], order,
                      title="level", fontsize=7, title_fontsize=7, loc="best", frameon=False)
        ax.set_title(title, fontsize=10)
        log2_axis(ax, bins.x.min(), bins.x.max())
        ax.grid(True, which="major", alpha=0.25)
    if log_y:
        log_y_axis(axes[0, 0])
    for ax in axes[:, 0]:
        ax.set_ylabel("KL(P_dense ‖ Q) [nats/token]", fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("position (tokens of context)", fontsize=9)
    ctx_handles = [Line2D([], [], color="0.2", ls=s, lw=1.3) for s in styles.values()]
    fig.legend(ctx_handles, [f"ctx {ctx_label(c)}" for c in styles], loc="outside upper right",
               ncol=len(styles), fontsize=8, frameon=False)
    sub = _subtitle(bins)
    fig.suptitle("KL vs position: octave-bin mean ± SE across documents" + (f"  ({sub})" if sub else ""),
                 fontsize=10, x=0.01, ha="left")
    return fig


def sensitivity_figure(jobs: pd.DataFrame):
    """Rows: mean KL, late slope (names.FIG_SENSITIVITY); columns: compressors; x: ctx; colour: level."""
    plt = _plt()
    from matplotlib.lines import Line2D

    jobs = jobs.assign(ctx=jobs.ctx.astype(int))
    colors = level_colors(jobs)
    groups = panels(jobs)
    nrow, ncol = len(FIG_SENSITIVITY), len(groups)
    # y not shared: one compressor's trend over ctx stays readable beside another's much larger KL
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + 0.6, 2.9 * nrow + 0.3), squeeze=False,
                             layout="constrained")
    ctxs = sorted(jobs.ctx.unique())
    for j, (key, title, rows) in enumerate(groups):
        comp = key[-1]
        levels = [lev for (cc, lev) in colors if cc == comp]
        for i, shown in enumerate(FIG_SENSITIVITY):
            ax = axes[i, j]
            for k, lev in enumerate(levels):
                r = rows[rows.level == lev].sort_values("ctx")
                r = r[r[shown.key].notna()]
                if r.empty:
                    continue
                shift = 2.0 ** (0.06 * (k - (len(levels) - 1) / 2))  # levels side by side, not on top
                ax.errorbar(r.ctx * shift, r[shown.key], yerr=r[shown.se].fillna(0), color=colors[(comp, lev)],
                            marker="o", ms=4, lw=1.3, capsize=3, label=lev)
            if shown.key.startswith("kl_slope"):
                ax.axhline(0, color="0.5", lw=0.8, ls=":")
            vals = rows[shown.key].dropna()
            if shown.key == FIG_SENSITIVITY[0].key and len(vals) and vals.min() > 0 and vals.max() / vals.min() >= 5:
                log_y_axis(ax)  # levels orders of magnitude apart
            if rows[shown.key].isna().all():
                ax.text(0.5, 0.5, "undefined at these ctx\n(needs ≥ 2 bins from position 512: ctx > 1k)"
                        if "late" in shown.key else "undefined", ha="center", va="center",
                        transform=ax.transAxes, fontsize=7, color="0.3")
            log2_axis(ax, min(ctxs) / 1.5, max(ctxs) * 1.5 if len(ctxs) > 1 else max(ctxs) * 2)
            ax.set_xticks([float(c) for c in ctxs])
            ax.set_xticklabels([ctx_label(c) for c in ctxs], fontsize=8)
            ax.grid(True, alpha=0.25)
            if i == 0:
                ax.set_title(title, fontsize=10)
            if j == 0:
                ax.set_ylabel(shown.label, fontsize=9)
            if i == nrow - 1:
                ax.set_xlabel("context length (tokens)", fontsize=9)
        if levels:
            axes[0, j].legend([Line2D([], [], color=colors[(comp, lev)], marker="o", lw=1.3) for lev in levels],
                              levels, title="level", fontsize=7, title_fontsize=7, frameon=False, loc="best")
    sub = _subtitle(jobs)
    fig.suptitle("Sensitivity to context length: mean ± SE across documents" + (f"  ({sub})" if sub else ""),
                 fontsize=10, x=0.01, ha="left")
    return fig
