"""Findings written from the numbers: per scenario, each policy at its best driver API on each figure,
and which unshared policy is lowest and by how much.

Each policy is taken at its best driver API for the figure (the lowest mean
over seeds), and the winner is compared with the runner-up. `shared` needs an
IOMMU that can walk the P2M, so the best unshared policy is named too: that is
the answer for the IPMMU in stage-1 mode. A policy under which some domain
creations were refused (no IPMMU context: XT takes one at every creation) has
not run the scenario's workload, so its cheaper figures do not rank: it is shown,
marked, and left out of the winners. The page shows one short table per
scenario (rows: format and figure; columns: the policies).
"""

from __future__ import annotations

from ..xen.rules import POLICY_RULES
from .figures import HOST_KEYS, POLICY_ORDER, Stat

METRICS = (  # figure, what it is, unit, format, its row in a findings table
    ("iommu_mib", "IOMMU table memory per host", "MiB", ".2f", "IOMMU MiB per host"),
    ("iommu_pct_ram", "IOMMU table memory as % of guest RAM", "%", ".3f", "% of guest RAM"),
    ("boot_mean_ms", "boot latency (mean over domains)", "ms", ".3f", "boot ms (mean)"),
    ("assign_max_ms", "device assignment latency (slowest)", "ms", ".3f", "slowest assign ms"),
    ("invalidations", "IOTLB invalidations per host", "", ",.0f", "invalidations per host"),
)
REFUSED = ("create_refused_context", "domain creations refused per host", "", ".2f", "creations refused")
UNSHARED = tuple(name for name, rule in POLICY_RULES.items() if not rule.shared)


def refusing(groups: dict[tuple, dict[str, Stat]], where: dict) -> dict[str, float]:
    """The policies under which domain creations were refused there, and how many per host (the
    context rule does not depend on the API, so any API's count is the policy's)."""
    return {p: v for p, (_, v) in best_per_policy(groups, where, "create_refused_context").items() if v > 0}


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
    unit = f" {unit}" if unit else ""
    if format(v1, spec) == format(v2, spec):
        return f"`{p1}` ({a1}) and `{p2}` ({a2}) tie at {v1:{spec}}{unit}"
    by = f"{v2 / v1:.2f}x" if v1 > 0 else f"{v2 - v1:{spec}}{unit}"
    return f"`{p1}` ({a1}) is lowest at {v1:{spec}}{unit}, {by} below `{p2}` ({a2}) at {v2:{spec}}"


def _ranked(best: dict[str, tuple[str, float]]) -> list[tuple[str, tuple[str, float]]]:
    return sorted(best.items(), key=lambda kv: (kv[1][1], kv[0]))


def findings(groups: dict[tuple, dict[str, Stat]]) -> list[dict]:
    """One finding per scenario/format/costs and metric: winner, runner-up, their values, the lowest
    unshared policy and its runner-up, each policy at its best API, and a sentence for the terminal."""
    places = sorted({(k[0], k[1], k[2], k[3]) for k in groups})
    out = []
    for scenario, fmt, p2m, costs in places:
        where = {"scenario": scenario, "format": fmt, "p2m_format": p2m, "costs": costs}
        out_of = refusing(groups, where)
        for figure, what, unit, spec, label in ((*METRICS, REFUSED) if out_of else METRICS):
            best = best_per_policy(groups, where, figure)
            ranked = _ranked({p: v for p, v in best.items() if p not in out_of or figure == REFUSED[0]})
            if len(ranked) < 2:
                continue
            text = f"{what}: {compare(ranked[0], ranked[1], spec, unit)}"
            if out_of and figure != REFUSED[0]:
                text += "; " + ", ".join(f"`{p}` refused {v:.2f} creations and does not rank" for p, v in
                                         sorted(out_of.items()))
            unshared = [r for r in ranked if r[0] != "shared"]
            if ranked[0][0] == "shared" and len(unshared) >= 2:
                text += f"; with an unshared table (IPMMU stage 1), {compare(unshared[0], unshared[1], spec, unit)}"
            (win, (win_api, win_v)), (second, (second_api, second_v)) = ranked[0], ranked[1]
            out.append({"scenario": scenario, "format": fmt, "p2m_format": p2m, "costs": costs, "figure": figure,
                        "what": what, "label": label, "unit": unit, "spec": spec, "best": best,
                        "winner": win, "winner_api": win_api, "value": win_v, "runner_up": second,
                        "runner_up_api": second_api, "runner_up_value": second_v,
                        "unshared": unshared[:2], "refusing": out_of, "text": text})
    return out


def _lowest_unshared(f: dict) -> str:
    """'`declared`, 1.22x below `lazy`', a tie, or the one unshared policy there is."""
    unshared, spec = f["unshared"], f["spec"]
    if not unshared:
        return "-"
    if len(unshared) == 1:
        return f"`{unshared[0][0]}`"
    (p1, (_, v1)), (p2, (_, v2)) = unshared
    if format(v1, spec) == format(v2, spec):
        return f"`{p1}` = `{p2}`"
    return f"`{p1}`, " + (f"{v2 / v1:.2f}x below `{p2}`" if v1 > 0 else f"{v2 - v1:{spec}} below `{p2}`")


def tables(finds: list[dict]) -> dict[str, list[dict]]:
    """Per scenario, the rows of its findings table: format, figure, each policy's value at its best API
    (the lowest of the row in bold), and the lowest unshared policy against its runner-up."""
    policies = [p for p in POLICY_ORDER if any(p in f["best"] for f in finds)]
    out: dict[str, list[dict]] = {}
    for f in finds:
        low = format(f["value"], f["spec"])
        row = {"format": f["format"], "figure": f["label"]}
        for p in policies:
            if p not in f["best"]:
                row[p] = "-"
                continue
            api, v = f["best"][p]
            cell = f"{v:{f['spec']}} ({api})"
            if p in f["refusing"] and f["figure"] != REFUSED[0]:
                row[p] = f"{cell} †"                # creations refused: it does not rank
                continue
            row[p] = f"**{cell}**" if format(v, f["spec"]) == low else cell
        row["lowest unshared"] = _lowest_unshared(f)
        out.setdefault(f["scenario"], []).append(row)
    return out
