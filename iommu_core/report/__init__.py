"""The report of a sweep run: figures, findings, plots, the page, and comparing two runs."""
