"""Sweeps: a grid of host runs (cells), run as Ray tasks, results streamed to Parquet."""
