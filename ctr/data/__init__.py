"""The data path: prepared shards -> columnar splits -> KJT batches -> loaders -> the Lightning data module."""
