"""Embedding tables: layouts (one class per method), the embedding arch, quantisation, table optimisers."""
