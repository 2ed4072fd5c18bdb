"""Layers and the model zoo: the base CTR models over one embedding layer."""
