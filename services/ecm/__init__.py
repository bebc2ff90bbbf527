"""k-resolved electron correlation microscopy (Huang & Voyles, 5D-STEM): pure algorithms."""
