"""Real images (paper Sec. 6): intake, alignment, inversion, encoders, directions, editing."""
