"""Findings written from the numbers: which policy wins on memory, boot and assignment latency, by how much.

Each policy is taken at its best driver API for the figure (the lowest mean
over seeds), and the winner is compared with the runner-up. `shared` needs an
IOMMU that can walk the P2M, so where it wins on memory the best unshared
policy is named too: that is the answer for the IPMMU in stage-1 mode.
"""

from __future__ import annotations

from .figures import HOST_KEYS, Stat

METRICS = (  # figure, what it is, unit, format
    ("iommu_mib", "IOMMU table memory per host", "MiB", ".2f"),
    ("boot_mean_ms", "boot latency (mean over domains)", "ms", ".3f"),
    ("assign_max_ms", "device assignment latency (slowest)", "ms", ".3f"),
)


def best_per_policy(groups: dict[tuple, dict[str, Stat]], where: dict, figure: str) -> dict[str, tuple[str, float]]:
    """For one scenario/format/costs: each policy's best API ('any API' when all give the same) and its mean."""
    values: dict[str, dict[str, float]] = {}
    for key, figs in groups.items():
        k = dict(zip(HOST_KEYS, key))
        if all(k[n] == v for n, v in where.items()):
            values.setdefault(k["policy"], {})[k["api"]] = figs[figure].mean
    best = {}
    for policy, per_api in values.items():
        api = min(per_api, key=per_api.get)
        best[policy] = ("any API" if len(set(per_api.values())) == 1 and len(per_api) > 1 else api, per_api[api])
    return best


def compare(win: tuple, other: tuple, spec: str, unit: str) -> str:
    """'`a` (api) at 1.00 unit, 2.50x below `b` (api) at 2.50', or a tie at the printed precision."""
    (p1, (a1, v1)), (p2, (a2, v2)) = win, other
    if format(v1, spec) == format(v2, spec):
        return f"`{p1}` ({a1}) and `{p2}` ({a2}) tie at {v1:{spec}} {unit}"
    by = f"{v2 / v1:.2f}x" if v1 > 0 else f"{v2 - v1:{spec}} {unit}"
    return f"`{p1}` ({a1}) is lowest at {v1:{spec}} {unit}, {by} below `{p2}` ({a2}) at {v2:{spec}}"


def findings(groups: dict[tuple, dict[str, Stat]]) -> list[dict]:
    """One finding per scenario/format/costs and metric: winner, runner-up, their values, and a sentence."""
    places = sorted({(k[0], k[1], k[2], k[3]) for k in groups})
    out = []
    for scenario, fmt, p2m, costs in places:
        where = {"scenario": scenario, "format": fmt, "p2m_format": p2m, "costs": costs}
        for figure, what, unit, spec in METRICS:
            ranked = sorted(best_per_policy(groups, where, figure).items(), key=lambda kv: (kv[1][1], kv[0]))
            if len(ranked) < 2:
                continue
            text = f"{what}: {compare(ranked[0], ranked[1], spec, unit)}"
            unshared = [r for r in ranked if r[0] != "shared"]
            if ranked[0][0] == "shared" and len(unshared) >= 2:
                text += f"; with an unshared table (IPMMU stage 1), {compare(unshared[0], unshared[1], spec, unit)}"
            (win, (win_api, win_v)), (second, (second_api, second_v)) = ranked[0], ranked[1]
            out.append({"scenario": scenario, "format": fmt, "p2m_format": p2m, "costs": costs, "figure": figure,
                        "winner": win, "winner_api": win_api, "value": win_v, "runner_up": second,
                        "runner_up_api": second_api, "runner_up_value": second_v, "text": text})
    return out
