"""Model wrappers: the VQGAN image decoder and the CLIP scorer."""
