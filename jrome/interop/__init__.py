"""Bridges between jrome and other JAX interpretability code (penzai)."""
