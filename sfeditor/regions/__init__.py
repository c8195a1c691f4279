"""Semantic regions (paper Sec. 4.2): DeepPixels, clustering, masks, M and w_R, regions files."""
