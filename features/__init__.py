"""Polars feature pipelines: raw logs -> encoded parquet shards + feature_map.json (see features.prepare)."""
