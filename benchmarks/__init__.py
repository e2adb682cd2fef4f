"""asv benchmarks of the page-table engine; figures are ratios to the yardsticks measured in the same run."""
