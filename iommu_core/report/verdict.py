"""The report's answer first: at most six sentences, every number from the run.

Which policy a Xen-on-Arm maintainer should pick for an IPMMU-like unshared
IOMMU and what it costs against the other unshared policies; what the driver
API changes; where the hardware caps the choice; and which settings follow
real Xen code and which are design assumptions. The pick is the unshared
policy that is lowest (or tied at the printed precision) on the most of
memory, mean boot and slowest assignment, each policy at its best API, over
the scenarios of the run's main IOMMU format.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from ..store.results import run_directory
from .figures import API_ORDER, HOST_KEYS, POLICY_ORDER, Stat, by_host_key, first_costs, hosts
from ..xen.rules import API_RULES, POLICY_RULES
from .findings import UNSHARED, best_per_policy, refusing

FIGURES = ("iommu_mib", "iommu_pct_ram", "boot_mean_ms", "assign_max_ms", "invalidations", "ram_bytes",
           "assign_refused_context", "assign_refused_undeclared", "create_refused_context", "unreachable_mib", "domains")
PICK_BY = (("iommu_mib", ".2f"), ("boot_mean_ms", ".3f"), ("assign_max_ms", ".3f"))
WHAT = {"eager": "a table for every domain from its creation",
        "lazy": "a table built at a domain's first assignment by copying its whole P2M",
        "declared": "a table only for domains created with the passthrough flag"}
MAX_SENTENCES = 6


def _most_common(values) -> str:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _pct(x: float) -> str:
    """A share of guest RAM with the digits that matter: 0.159, 0.0046, 0.00014."""
    return "0" if x == 0 else f"{x:.3f}" if x >= 0.01 else f"{x:.2g}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Run:
    """The groups the verdict reads: one cost variant, one P2M format; places are (scenario, format)."""

    def __init__(self, cells: pa.Table):
        self.costs = first_costs(cells)
        p2m = _most_common(cells.filter(pc.equal(cells["costs"], self.costs))["p2m_format"].to_pylist())
        rows = cells.filter(pc.equal(cells["p2m_format"], p2m))
        self.groups: dict[tuple, dict[str, Stat]] = by_host_key(rows, FIGURES, costs=self.costs)
        self.keys = [dict(zip(HOST_KEYS, k)) for k in self.groups]
        per_format = Counter((k["format"], k["scenario"]) for k in self.keys)
        scenarios_of = Counter(f for f, _ in per_format)
        self.format = min(scenarios_of, key=lambda f: (-scenarios_of[f], -sum(n for (g, _), n in per_format.items()
                                                                             if g == f), f))
        self.scenarios = sorted({k["scenario"] for k in self.keys if k["format"] == self.format})

    def get(self, scenario, fmt, policy, api) -> dict[str, Stat] | None:
        for key, figs in self.groups.items():
            k = dict(zip(HOST_KEYS, key))
            if (k["scenario"], k["format"], k["policy"], k["api"]) == (scenario, fmt, policy, api):
                return figs
        return None

    def apis(self, scenario, fmt, policy) -> list[str]:
        have = {k["api"] for k in self.keys if (k["scenario"], k["format"], k["policy"]) == (scenario, fmt, policy)}
        return [a for a in API_ORDER if a in have] + sorted(have - set(API_ORDER))

    def policies(self) -> list[str]:
        have = {k["policy"] for k in self.keys}
        return [p for p in POLICY_ORDER if p in have]

    def where(self, scenario: str) -> dict:
        return {"scenario": scenario, "format": self.format, "costs": self.costs}

    def refusing(self, scenario: str) -> dict[str, float]:
        """Policies under which domain creations were refused on the scenario: they do not rank there."""
        return refusing(self.groups, self.where(scenario))


def _pick(run: _Run) -> tuple[str, int, int]:
    """The unshared policy lowest or tied on the most comparisons; its wins and the comparisons made.
    A policy that had domain creations refused on a scenario has not run its workload there: it takes
    part in that scenario's comparisons as their last."""
    wins, rank_sum, n = Counter(), Counter(), 0
    for scenario in run.scenarios:
        out_of = run.refusing(scenario)
        for figure, spec in PICK_BY:
            best = {p: v for p, (_, v) in best_per_policy(run.groups, run.where(scenario), figure).items()
                    if p in UNSHARED}
            if len(best) < 2:
                continue
            n += 1
            ranking = {p: v for p, v in best.items() if p not in out_of}
            low = format(min(ranking.values()), spec) if ranking else None
            for rank, p in enumerate(sorted(ranking, key=ranking.get)):
                wins[p] += format(ranking[p], spec) == low
                rank_sum[p] += rank
            for p in out_of.keys() & best.keys():          # the refusing ones rank last
                rank_sum[p] += len(best)
    candidates = [p for p in run.policies() if p in UNSHARED]
    policy = min(candidates, key=lambda p: (-wins[p], rank_sum[p], POLICY_ORDER.index(p)))
    return policy, wins[policy], n


def _quoted(run: _Run, policy: str) -> list[str]:
    """The scenarios the costs are quoted for: of those with the most settings, the smallest and the
    largest by guest RAM."""
    size = {s: len([k for k in run.keys if (k["scenario"], k["format"]) == (s, run.format)]) for s in run.scenarios
            if run.apis(s, run.format, policy)}
    if not size:
        return []
    full = [s for s in size if size[s] == max(size.values())]
    ram = {s: run.get(s, run.format, policy, run.apis(s, run.format, policy)[0])["ram_bytes"].mean for s in full}
    small, large = min(full, key=lambda s: (ram[s], s)), max(full, key=lambda s: (ram[s], s))
    return [small] if small == large else [small, large]


def _best_api(run: _Run, scenario: str, policy: str) -> str:
    """The policy's API with the least table memory there (ties: the faster boot)."""
    return min(run.apis(scenario, run.format, policy), key=lambda a: (
        round(run.get(scenario, run.format, policy, a)["iommu_mib"].mean, 2),
        run.get(scenario, run.format, policy, a)["boot_mean_ms"].mean))


def _first(run: _Run, policy: str, wins: int, n: int) -> str:
    text = (f"For an IPMMU-like unshared IOMMU, **pick `{policy}`** ({WHAT[policy]}): " +
            (f"of the unshared policies it is lowest or tied on {wins} of {n} comparisons (IOMMU memory, mean boot "
             f"and slowest assignment latency, each policy at its best driver API, on {_and(run.scenarios)} with "
             f"{run.format})" if n else
             f"it is the only unshared policy the run has on {_and(run.scenarios)} with {run.format}, so nothing "
             f"here compares it with another"))
    refused = [(run.get(s, run.format, policy, _best_api(run, s, policy))["assign_refused_undeclared"].mean, s)
               for s in run.scenarios if run.apis(s, run.format, policy)]
    worst = max(refused, default=(0.0, ""))
    if worst[0] > 0:
        text += (f", and its price is {_count(worst[0])} device hot-plugs per {worst[1]} host refused into "
                 f"domains created without the flag")
    return text + "."


def _costs(run: _Run, scenario: str, policy: str, lead: str) -> str:
    api = _best_api(run, scenario, policy)
    mine = run.get(scenario, run.format, policy, api)
    out_of = run.refusing(scenario)
    others = [(p, run.get(scenario, run.format, p, api)) for p in run.policies()
              if p in UNSHARED and p != policy and p not in out_of]
    others = [(p, f) for p, f in others if f is not None]

    def vs(figure: str, spec: str) -> str:
        return "; ".join(f"`{p}` {f[figure].mean:{spec}}" for p, f in others)

    def part(figure: str, spec: str) -> str:
        return f" ({vs(figure, spec)})" if others else ""
    pct = f"{_pct(mine['iommu_pct_ram'].mean)} % of guest RAM"
    return (f"{lead} the `{api}` API on {scenario} ({run.format}), it needs {mine['iommu_mib'].mean:.2f} MiB of "
            f"IOMMU table per host ({pct}" + (f"; {vs('iommu_mib', '.2f')}" if others else "") + "), "
            f"boots a domain in {mine['boot_mean_ms'].mean:.3f} ms on average{part('boot_mean_ms', '.3f')}, "
            f"assigns a device in {mine['assign_max_ms'].mean:.3f} ms at the slowest{part('assign_max_ms', '.3f')} "
            f"and issues {mine['invalidations'].mean:,.0f} IOTLB invalidations{part('invalidations', ',.0f')}.")


def _api(run: _Run, scenario: str, policy: str) -> str | None:
    apis = run.apis(scenario, run.format, policy)
    fig = {a: run.get(scenario, run.format, policy, a) for a in apis}
    parts = []
    if "per-page" in fig and "batched" in fig:
        a, b = fig["per-page"], fig["batched"]
        parts.append(f"per-page calls (what Xen's Arm drivers advertise today) make a boot take "
                     f"{a['boot_mean_ms'].mean:.3f} ms on average with {a['invalidations'].mean:,.0f} invalidations, "
                     f"against {b['boot_mean_ms'].mean:.3f} ms and {b['invalidations'].mean:,.0f} with `batched`")
    flat = [a for a in apis if a != "blocks"]
    if "blocks" in fig and flat:
        pages = min(fig[a]["iommu_mib"].mean for a in flat)
        parts.append(f"block entries (`blocks`) shrink its table from {pages:.2f} MiB with 4 KiB entries to "
                     f"{fig['blocks']['iommu_mib'].mean:.2f} MiB")
    if not parts:
        return None
    best = _best_api(run, scenario, policy)
    boots = [f["boot_mean_ms"].mean for f in fig.values()]
    by_api = max(boots) / min(boots) if min(boots) > 0 else float("inf")
    rivals = [run.get(scenario, run.format, p, best) for p in run.policies() if p in UNSHARED]
    rival_boots = [f["boot_mean_ms"].mean for f in rivals if f is not None]
    by_policy = max(rival_boots) / min(rival_boots) if min(rival_boots) > 0 else float("inf")
    lead = ("The driver API moves the figures more than the policy does" if by_api > by_policy
            else "The driver API moves the figures too")
    return f"{lead}: for `{policy}` on {scenario}, " + ", and ".join(parts) + "."


def _ia_bits(fmt: str) -> int | None:
    from ..pgtable.format import Format

    try:
        return Format.preset(fmt).ia_bits
    except (KeyError, ValueError):
        return None


def _hardware(run: _Run, policy: str) -> str | None:
    parts = []
    by_scenario: dict[str, list[tuple[str, float]]] = {}
    for key, figs in run.groups.items():
        k = dict(zip(HOST_KEYS, key))
        by_scenario.setdefault(k["scenario"], []).append((k["policy"], figs["assign_refused_context"].mean))
    refused: dict[str, list[str]] = {}
    for scenario in run.scenarios + sorted(set(by_scenario) - set(run.scenarios)):
        domains = max(f["domains"].mean for k, f in run.groups.items() if k[0] == scenario)
        for p, v in refusing(run.groups, {"scenario": scenario, "costs": run.costs}).items():
            refused.setdefault(p, []).append(f"{_count(v)} of {scenario}'s {_count(domains)}")
    if refused:
        parts.append("XT takes an IPMMU context at every creation, so creations are refused for want of one: " +
                     "; ".join(f"under `{p}` {_and(refused[p])} per host" for p in POLICY_ORDER if p in refused))
    for scenario, values in sorted(by_scenario.items()):
        mine = max((v for p, v in values if p == policy), default=0.0)
        if mine > 0:
            every = all(v > 0 for _, v in values)
            parts.append(f"{scenario}'s guests get {_count(mine)} device assignments per host refused for want of "
                         f"a free IPMMU context" + (" under every policy" if every else f" under `{policy}`"))
    for fmt in sorted({k["format"] for k in run.keys}):
        lost = [(figs["unreachable_mib"].mean, k[0]) for k, figs in run.groups.items()
                if k[1] == fmt and k[4] == policy]
        mib, scenario = max(lost, default=(0.0, ""))
        if mib > 0:
            bits = _ia_bits(fmt)
            parts.append(f"the {bits}-bit IPA size of {fmt} leaves {mib:,.0f} MiB of {scenario} unreachable for DMA"
                         if bits else f"{fmt} leaves {mib:,.0f} MiB of {scenario} unreachable for DMA")
    if "shared" in run.policies():
        lowest = True                               # at the printed precision, on every figure and scenario
        for s in run.scenarios:
            for figure, spec in PICK_BY:
                best = {p: float(format(v, spec)) for p, (_, v) in best_per_policy(run.groups, run.where(s),
                                                                                     figure).items()}
                lowest &= "shared" not in best or best["shared"] <= min(best.values())
        mib = max(f["iommu_mib"].mean for k, f in run.groups.items() if k[4] == "shared")
        parts.append(f"`shared` ({mib:.2f} MiB" + (", the lowest on every figure" if lowest else "") +
                     ") needs an IOMMU that walks the stage-2 P2M, which the IPMMU in stage-1 mode cannot")
    return "The hardware caps the choice: " + "; ".join(parts) + "." if parts else None


def _real(policy: str, api: str) -> bool:
    """Whether a policy with a driver API follows real Xen code (the rules table says which do)."""
    rule = POLICY_RULES.get(policy)
    return rule is not None and rule.real and (rule.shared or API_RULES[api].real)


def _grounding(policy: str, api: str) -> str:
    real = [f"`{p}`" for p in POLICY_ORDER if p in POLICY_RULES and _real(p, "per-page")]
    design = [f"`{a}`" for a, r in API_RULES.items() if not r.real] + \
        [f"`{p}` on Arm" for p, r in POLICY_RULES.items() if not r.real]
    return (f"With the per-page API, {_and(real)} follow real Xen code (the unshared ones EPAM's xen-troops IPMMU "
            f"driver, `shared` upstream Xen 4.17); {_and(design)} are design assumptions with no Xen code behind "
            f"them, so " + (f"`{policy}` with `{api}` follows real code." if _real(policy, api) else
                            f"`{policy}` with `{api}` is a design to build and to check against a real Xen, not a "
                            f"measured driver."))


def verdict(cells: pa.Table) -> list[str]:
    """The verdict's sentences (at most six), from the per-host rows of a run (figures.hosts)."""
    run = _Run(cells)
    if not any(p in UNSHARED for p in run.policies()):
        return [f"The run has no unshared policy (it has {', '.join(run.policies())}), so it cannot say which one "
                f"an IPMMU-like unshared IOMMU should use."]
    policy, wins, n = _pick(run)
    quoted = _quoted(run, policy)
    sentences = [_first(run, policy, wins, n)]
    for i, scenario in enumerate(quoted):
        sentences.append(_costs(run, scenario, policy, f"Under the `{run.costs}` costs, with" if i == 0 else "With"))
    if quoted:
        api_sentence = _api(run, quoted[-1], policy)
        if api_sentence:
            sentences.append(api_sentence)
    hardware = _hardware(run, policy)
    if hardware:
        sentences.append(hardware)
    sentences.append(_grounding(policy, _best_api(run, quoted[-1], policy) if quoted else "per-page"))
    return sentences                                # 1 + at most 2 + 1 + 1 + 1: MAX_SENTENCES


def markdown(sentences: list[str]) -> str:
    """The verdict as Markdown: one list item per sentence."""
    return "".join(f"- {s}\n" for s in sentences)


def run_verdict(results, run: str | None = None) -> str:
    """The verdict of a run as Markdown (a run's directory, or `run` under a results directory): what the
    report opens with and the README quotes."""
    return markdown(verdict(hosts(run_directory(results, run))))
