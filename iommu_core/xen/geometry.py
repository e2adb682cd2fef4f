"""The P2M's geometry as Xen 4.17 picks it from the CPU's physical address size.

setup_virt_paging (xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:2282) takes
the IPA size equal to the PA size, capped at PADDR_BITS (48 on arm64, :38) and at
what an IOMMU sharing the P2M can walk (p2m_restrict_ipa_bits, :2240), and looks
it up in pa_range_info (:2289): 32 and 36 bits start at level 1 with one root
page, 40 at level 1 with 2 concatenated roots, 42 with 8, 44 and 48 at level 0.
The Format presets p2m-s2-<bits> derive the same start level and root pages.
"""

from __future__ import annotations

PADDR_BITS = 48
PA_RANGES = (32, 36, 40, 42, 44, 48)          # pa_range_info's sizes Xen 4.17 uses on arm64

# PA sizes of CPUs a device tree names (each core's Technical Reference Manual, ID_AA64MMFR0_EL1.PARange).
CPU_PA_BITS = {
    "arm,cortex-a53": 40, "arm,cortex-a55": 40, "arm,cortex-a57": 44, "arm,cortex-a72": 44,
    "arm,cortex-a73": 40, "arm,cortex-a76": 40, "arm,neoverse-n1": 48, "arm,neoverse-v1": 48,
}


def p2m_ipa_bits(pa_bits: int, iommu_limit: int | None = None) -> int:
    """The IPA size Xen 4.17 gives every P2M on a CPU with `pa_bits` of PA."""
    if isinstance(pa_bits, bool) or not isinstance(pa_bits, int) or pa_bits < PA_RANGES[0]:
        raise ValueError(f"pa_bits must be an integer of at least {PA_RANGES[0]}, got {pa_bits!r}")
    bits = min(pa_bits, PADDR_BITS)
    if iommu_limit is not None:
        bits = min(bits, iommu_limit)
    return max(r for r in PA_RANGES if r <= bits)


def p2m_format_for(pa_bits: int, iommu_limit: int | None = None) -> str:
    """The Format preset of the P2M Xen builds on such a CPU."""
    return f"p2m-s2-{p2m_ipa_bits(pa_bits, iommu_limit)}"
