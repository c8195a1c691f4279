"""Fusion (paper Sec. 4.3, 4.5): LatentBlender, FusionNet and the hierarchy of FusionNets."""
