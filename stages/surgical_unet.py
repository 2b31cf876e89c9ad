"""surgical_unet: the one place the model changes.

`model: musetalk` runs MuseTalk v1.5's UNet; `model: latentsync` runs LatentSync's
UNet3D (`version: "1.5"` at 256 px or `"1.6"` at 512 px) with `fallback: musetalk`
(default) or `fallback: none`:

- LatentSync's weights missing: one note at startup, and the whole run is MuseTalk (every
  `auto` stage then prepares MuseTalk's inputs only);
- LatentSync failing to load: one warning naming the reason, the whole run uses MuseTalk
  (vae_encode, which may run in another process, still prepares LatentSync's inputs: each
  window drops them here and MuseTalk encodes its own from the crops);
- a window failing at run time (CUDA out of memory, non-finite output, any error): that
  window is redone with MuseTalk from the same frames, as MuseTalk's inputs, and the run
  goes on. Fallbacks are counted per reason in the profile (`fallback_windows`,
  `fallback_frames`); `frames_<model>` counts the frames each model made.
With `fallback: none` a failure stops the run with the stage, window and reason.
"""
from __future__ import annotations

import os

from lipgraph.graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params, free_cuda_cache, is_oom
from .fields import names, unet_inputs
from .unets import unet_class
from .unets.musetalk import MuseTalkUNet

# what a window falling back to MuseTalk drops: LatentSync's inputs and any partial output
_DISCARD = unet_inputs("latentsync") + names("pred")


class SurgicalUNet(Stage):
    params = {"model": "musetalk", "fallback": "musetalk", "weights": "",
              # MuseTalk files (or --weights)
              "unet": "", "unet_config": "", "vae": "",
              # LatentSync files (or --weights) and sampling
              "version": "auto", "unet3d": "", "unet3d_config": "", "steps": 20, "guidance": 1.5,
              "cache_interval": 0, "seed": 1247,
              **DEVICE_PARAMS}
    random_weights = {"unet": "unet", "unet_config": "unet_config", "vae": "vae",
                      "unet3d": "unet3d", "unet3d_config": "unet3d_config"}
    renamed = {"backend": "model"}
    choices = {"fallback": ("musetalk", "none"), "version": ("auto", "1.5", "1.6")}
    bind_order = -1
    reads = ()              # what each model's UNet needs depends on it and on the window
    writes = names("pred", "model")

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        try:
            unet_class(params["model"])
        except (ValueError, ImportError, AttributeError) as exc:
            problems.append(("model", str(exc)))
        if params["steps"] < 1:
            problems.append(("steps", "must be >= 1"))
        if params["guidance"] < 1.0:
            problems.append(("guidance", "must be >= 1.0 (1.0 turns guidance off)"))
        if params["cache_interval"] < 0:
            problems.append(("cache_interval", "must be >= 0 (0 or 1: off)"))
        return problems

    @classmethod
    def bind(cls, params, graph, notes):
        """The LatentSync version from its checkpoint; LatentSync with a MuseTalk fallback and
        no LatentSync weights: MuseTalk it is."""
        if str(params["version"]) == "auto":
            params["version"] = checkpoint_version(params["unet3d"], params["weights"])
        if params["model"] != "latentsync" or params["fallback"] != "musetalk":
            return params
        from .unets.latentsync import LatentSyncUNet
        need = LatentSyncUNet.required_weights(params)
        missing = None
        if not need and not os.path.exists(params["unet3d"]):
            missing = f"{params['unet3d']} does not exist"
        elif need:
            from lipgraph.models.weight_finder import MissingWeightsError, resolve_weights
            try:
                resolve_weights(params["weights"] or None, need)
            except MissingWeightsError as exc:
                missing = str(exc).splitlines()[0] + f" ({', '.join(exc.missing)})"
        if missing:
            notes.append(("model", f"LatentSync weights not found: {missing}; the whole run "
                                     "uses MuseTalk (fallback: musetalk)"))
            params["model"] = "musetalk"
        return params

    @classmethod
    def required_weights(cls, params):
        need = list(unet_class(params["model"]).required_weights(params))
        if params["model"] != "musetalk" and params["fallback"] == "musetalk":
            need += MuseTalkUNet.required_weights(params)
        return need

    def open(self):
        name = self.p["model"]
        self.fallback = None
        if name != "musetalk" and self.p["fallback"] == "musetalk":
            self.fallback = MuseTalkUNet(self)
        try:
            self.model = unet_class(name)(self)
        except Exception as exc:
            if self.fallback is None:
                raise
            self.model = None
            self.load_reason = f"{name} failed to load"          # the profile's reason
            self.ctx.warn(f"{self.load_reason}: {type(exc).__name__}: {exc}; "
                          "the whole run uses MuseTalk")

    def process(self, batch, port):
        if self.model is None:
            self._fall_back(batch, self.load_reason)
        else:
            reason = None
            try:
                self.model.run(batch)
            except Exception as exc:
                if self.fallback is None:
                    raise
                # fall back after the except block: the error's traceback holds the failed
                # window's tensors, which the MuseTalk rerun may need the memory of
                reason = _reason(exc)
            if reason is None:
                self.ctx.count(f"frames_{self.model.name}", len(batch))
            else:
                self._fall_back(batch, reason)
        yield "out", batch

    def _fall_back(self, batch, reason: str) -> None:
        for key in _DISCARD:
            batch.data.pop(key, None)
        free_cuda_cache()
        self.fallback.run(batch)
        self.ctx.count("frames_musetalk", len(batch))
        self.ctx.count("fallback_windows", 1, reason)
        self.ctx.count("fallback_frames", len(batch), reason)


def _reason(exc: BaseException) -> str:
    import torch
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory"
    if is_oom(exc):                      # the CPU allocator's or MPS's RuntimeError
        return "out of memory"
    if isinstance(exc, FloatingPointError):
        return "non-finite output"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}"


def checkpoint_version(unet3d: str, weights: str) -> str:
    """`version: auto`: 1.6 or 1.5 by the checkpoint found (a published file is known by its
    size, in our layout by its folder); 1.5 when nothing tells."""
    from lipgraph.models.weight_finder import find_weight, shared_variant
    from lipgraph.models.weight_table import WEIGHT_FILES
    by_name = {"latentsync15_unet": "1.5", "latentsync16_unet": "1.6"}
    if unet3d:
        return by_name.get(shared_variant(unet3d), "1.5") if os.path.isfile(unet3d) else "1.5"
    if weights:
        # 1.5 first: a shared name of unpublished size is taken for it, as for the default
        for name, version in by_name.items():
            if find_weight(WEIGHT_FILES[name], os.path.expanduser(weights), check_size=False,
                           search_caches=False).found is not None:
                return version
    return "1.5"
