"""Two runs side by side: each figure's change, and whether it is beyond the runs' own noise.

The noise of a figure is what its seeds give: with means a, b and sample
standard deviations sa, sb over na, nb seeds, a change is beyond the noise when
|b - a| > 2 * sqrt(sa^2/na + sb^2/nb) (about a 95 % band). Figures that do not
vary with the seed (sa = sb = 0) are deterministic, so any change in them is
beyond the noise.
"""

from __future__ import annotations

import math

from .figures import HOST_KEYS, by_host_key, hosts

FIGURES = (  # figure, title, format
    ("iommu_mib", "IOMMU MiB", ".2f"), ("iommu_pct_ram", "% of guest RAM", ".3f"),
    ("boot_mean_ms", "boot ms (mean)", ".3f"), ("assign_max_ms", "slowest assign ms", ".3f"),
    ("invalidations", "invalidations", ",.0f"), ("cache_lines_cleaned", "cache lines cleaned", ",.0f"),
    ("map_lat_mean_us", "map us (mean)", ".3f"), ("refused", "refused creations and assignments", ".2f"),
    ("unreachable_mib", "unreachable MiB", ".2f"),
)


def noise(a, b) -> float:
    return 2 * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def compare(run_a, run_b) -> dict:
    """Rows for every host key and figure of both runs; and the host keys only one run has."""
    groups = [by_host_key(hosts(r), [f for f, _, _ in FIGURES]) for r in (run_a, run_b)]
    a, b = groups
    rows = []
    for key in [k for k in a if k in b]:
        for fig, title, spec in FIGURES:
            x, y = a[key][fig], b[key][fig]
            band = noise(x, y)
            changed = format(x.mean, spec) != format(y.mean, spec)
            rows.append({**dict(zip(HOST_KEYS, key)), "figure": title, "a": format(x.mean, spec),
                         "b": format(y.mean, spec),
                         "change": ("0" if not changed else f"{100 * (y.mean - x.mean) / x.mean:+.1f}%"
                                    if x.mean else f"+{y.mean:{spec}}"),
                         "noise (2 sigma)": format(band, spec),
                         "beyond noise": "yes" if changed and abs(y.mean - x.mean) > band else "no",
                         "_changed": changed})
    only = {"a": [k for k in a if k not in b], "b": [k for k in b if k not in a]}
    return {"rows": rows, "only": only}
