"""The Xen model: P2M, IOMMU drivers, policies, domains and hosts."""
