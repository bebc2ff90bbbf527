"""Full k-resolved electron correlation microscopy (5D-STEM ECM) processing: pure algorithms."""
