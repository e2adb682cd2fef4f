"""What the project keeps on disk: sweep results and traces, both Parquet with a schema version."""
