"""The report of a sweep run: figures, the verdict, findings, plots, the page and its HTML, and comparing
two runs."""
