"""Data utilities: samplers and batch construction."""
