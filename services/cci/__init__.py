"""Coherent correlation imaging (Klose et al., Nature 614, 256 (2023)): pure algorithms."""
