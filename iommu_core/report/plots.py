"""The report's PNG plots (matplotlib, no display needed).

Every plot is at least 1000 x 600 pixels, and its axis labels carry units; the
labels are also stored in the PNG's text chunks ("Axes"), so a test or a
script can check what a plot shows without reading pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .figures import API_ORDER, HOST_KEYS, POLICY_ORDER, Stat  # noqa: E402

SIZE, DPI = (10, 6), 100                   # 1000 x 600 pixels
API_HATCH = {"per-page": "", "batched": "//", "blocks": ".."}


def _save(fig, path: Path, title: str, legend_from=None) -> Path:
    """Title, one legend below the plots (from the axes given), labels into the PNG's text chunks."""
    axes = [{"title": ax.get_title(), "x": ax.get_xlabel(), "y": ax.get_ylabel()} for ax in fig.axes
            if ax.get_xlabel() or ax.get_ylabel()]
    fig.suptitle(title)
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small")
    fig.tight_layout(rect=(0, 0.07 if legend_from is not None else 0, 1, 1))
    fig.savefig(path, dpi=DPI, metadata={"Title": title, "Axes": json.dumps(axes)})
    plt.close(fig)
    return path


def _places(groups: dict[tuple, dict]) -> list[tuple[str, str]]:
    return sorted({(k[0], k[1]) for k in groups})


def _size(columns: int) -> tuple[float, float]:
    """At least SIZE; wider when many scenarios stand side by side, so tick labels do not collide."""
    return max(SIZE[0], 3.6 * columns), SIZE[1]


def _subplots(n: int):
    fig, axes = plt.subplots(1, max(n, 1), figsize=_size(n), dpi=DPI, squeeze=False)
    return fig, axes[0]


def _bars(ax, groups, scenario, fmt, figure, error=True, marker=None):
    """Grouped bars: one group per policy, one bar per API, error bars = std over seeds; `marker`: a
    second figure drawn as a tick on each bar."""
    width = 0.8 / len(API_ORDER)
    here = [(dict(zip(HOST_KEYS, key)), figs) for key, figs in groups.items() if key[:2] == (scenario, fmt)]
    for j, api in enumerate(API_ORDER):
        bars = sorted(((POLICY_ORDER.index(k["policy"]), figs) for k, figs in here
                       if k["api"] == api and k["policy"] in POLICY_ORDER), key=lambda b: b[0])
        xs = [i + (j - 1) * width for i, _ in bars]
        ax.bar(xs, [f[figure].mean for _, f in bars], width, yerr=[f[figure].std for _, f in bars] if error else None,
               label=api, hatch=API_HATCH[api], edgecolor="black", capsize=2)
        if marker:
            ax.scatter(xs, [f[marker].mean for _, f in bars], marker="_", s=200, color="black", zorder=3,
                       label="analytic minimum" if j == 0 else None)
    ax.set_xticks(range(len(POLICY_ORDER)), POLICY_ORDER, fontsize="small")
    ax.set_title(f"{scenario} ({fmt})")


def memory(groups: dict[tuple, dict[str, Stat]], path: Path) -> Path:
    places = _places(groups)
    fig, axes = _subplots(len(places))
    for ax, (scenario, fmt) in zip(axes, places):
        _bars(ax, groups, scenario, fmt, "iommu_mib", marker="min_mib")
        reserved = max(f["reserved_mib"].mean for k, f in groups.items() if k[0] == scenario and k[1] == fmt)
        ax.axhline(reserved, color="red", linestyle="--", label="toolstack reservation")
        ax.set_xlabel("policy")
        ax.set_ylabel("IOMMU table memory (MiB per host)")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)               # sizes: an error bar must not reach below zero
    return _save(fig, path, "IOMMU table memory per policy and driver API (mean over seeds, bars: std)", axes[0])


def lazy_spike(groups: list[dict], path: Path) -> Path:
    """Slowest assignment of the domains with a device against their RAM, lazy (populate) vs declared: the
    mean per size, its bar from the least to the most (groups: figures.assignments_by_size)."""
    places = sorted({(g["scenario"], g["format"]) for g in groups})
    fig, axes = _subplots(len(places))
    styles = {"lazy": "o", "declared": "x"}
    for ax, (scenario, fmt) in zip(axes, places):
        for policy, marker in styles.items():
            for api in API_ORDER:
                pts = [g for g in groups if (g["scenario"], g["format"], g["policy"], g["api"]) == (scenario, fmt,
                                                                                                   policy, api)]
                if pts:
                    mean = [g["assign_ns"] / 1e6 for g in pts]
                    spread = [[max(m - g["assign_ns_min"] / 1e6, 0.0) for m, g in zip(mean, pts)],
                              [max(g["assign_ns_max"] / 1e6 - m, 0.0) for m, g in zip(mean, pts)]]
                    ax.errorbar([g["ram_bytes"] / 2**30 for g in pts], mean, yerr=spread, fmt=marker,
                                label=f"{policy} / {api}", alpha=0.7, capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("domain RAM (GiB)")
        ax.set_ylabel("slowest device assignment (ms, modelled)")
        ax.set_title(f"{scenario} ({fmt})")
    return _save(fig, path, "The latency lazy populate adds to device assignment, against domain size", axes[0])


def mapping_cost(groups: dict[tuple, dict[str, Stat]], path: Path) -> Path:
    places = _places(groups)
    fig, axes = plt.subplots(2, max(len(places), 1), figsize=_size(len(places)), dpi=DPI, squeeze=False)
    for col, (scenario, fmt) in enumerate(places):
        top, bottom = axes[0][col], axes[1][col]
        _bars(top, groups, scenario, fmt, "map_lat_mean_us", error=False)
        top.set_ylabel("map latency (us, mean per call)")
        top.set_xlabel("policy")
        top.set_yscale("log")
        _bars(bottom, groups, scenario, fmt, "invalidations")
        bottom.set_ylabel("IOTLB invalidations (per host)")
        bottom.set_xlabel("policy")
        bottom.set_yscale("symlog", linthresh=1)
        bottom.set_ylim(bottom=0)
        bottom.set_title("")
    return _save(fig, path, "Mapping cost per driver API: per-call map latency and invalidations", axes[0][0])


def fleet(groups: dict[tuple, dict[str, Stat]], path: Path) -> Path:
    places = _places(groups)
    fig, axes = plt.subplots(2, max(len(places), 1), figsize=_size(len(places)), dpi=DPI, squeeze=False)
    for col, (scenario, fmt) in enumerate(places):
        _bars(axes[0][col], groups, scenario, fmt, "refused")
        axes[0][col].set_ylabel("creations and assignments refused (per host)")
        axes[0][col].set_xlabel("policy")
        _bars(axes[1][col], groups, scenario, fmt, "unreachable_mib")
        axes[1][col].set_ylabel("unreachable guest memory (MiB per host)")
        axes[1][col].set_xlabel("policy")
        axes[1][col].set_title("")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_ylim(bottom=0)
    return _save(fig, path, "Fleet limits: IPMMU contexts (refused creations and assignments) and the IOVA "
                 "space (unreachable GFNs)", axes[0][0])


def scaling(worker_rows: list[dict], wall_s: float | None, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=SIZE, dpi=DPI)
    names = [w["worker"] for w in worker_rows]
    left.bar(range(len(names)), [w["busy_s"] for w in worker_rows], color="tab:blue", label="busy in cells")
    if wall_s:
        left.axhline(wall_s, color="red", linestyle="--", label="the sweep's wall time")
    left.set_xticks(range(len(names)), names, rotation=20, fontsize="small")
    left.set_xlabel("worker (node:pid)")
    left.set_ylabel("time (s)")
    left.legend(fontsize="small")
    right.bar(range(len(names)), [w["pages_per_s"] / 1e6 for w in worker_rows], color="tab:green")
    right.set_xticks(range(len(names)), names, rotation=20, fontsize="small")
    right.set_xlabel("worker (node:pid)")
    right.set_ylabel("engine speed (million simulated pages/s)")
    return _save(fig, path, "The sweep over its workers: time busy and engine speed")
