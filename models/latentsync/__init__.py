"""LatentSync 1.5 / 1.6 models. Public names are re-exported by ``models.latentsync_unet3d``."""
