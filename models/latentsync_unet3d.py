"""LatentSync 1.5 / 1.6 denoising UNet (``UNet3DConditionModel``) and its strict loader, as
implemented in ``models/latentsync/``."""

from lipgraph.models.latentsync.config import MotionModuleConfig, UNet3DConfig, read_unet_config
from lipgraph.models.latentsync.layers import sinusoid_table
from lipgraph.models.latentsync.loading import UNetCheckpointError, load_latentsync_unet
from lipgraph.models.latentsync.unet3d import DeepCacheState, UNet3DConditionModel, deepcache_is_full_step

__all__ = ["DeepCacheState", "MotionModuleConfig", "UNet3DConditionModel", "UNet3DConfig",
           "UNetCheckpointError", "deepcache_is_full_step", "load_latentsync_unet", "read_unet_config",
           "sinusoid_table"]
