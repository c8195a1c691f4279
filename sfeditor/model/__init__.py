"""The StyleGAN2 generator, its S space (paper Sec. 3) and safe checkpoint loading."""
