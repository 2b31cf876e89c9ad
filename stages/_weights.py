"""Where a stage's model files come from: an explicit path param, or the weights folder.

`--weights DIR` points at a MuseTalk `models/` folder, a LatentSync `checkpoints/` folder or a
checkout (also searched: the Hugging Face hub cache and the torch hub cache; the places are in
models/weight_table.py). run_graph resolves every stage's required files before starting, so a
user missing several files gets one error that lists them all (stages/preflight.py); files a
stage can do without are looked up when it opens, and their absence is a warning.
"""
from __future__ import annotations

import os


def resolve(stage, names: list[str]) -> dict:
    from lipgraph.models.weight_finder import resolve_weights
    return resolve_weights(stage.p.get("weights") or None, names)


def find_optional(folder: str | None, names: list[str]):
    """Files a stage can do without: `(found paths, MissingWeightsError or None)`, the error
    being the message of the stage's warning. Sizes are not checked: a damaged file at a
    known place fails loudly when loaded rather than being passed over."""
    from lipgraph.models.weight_finder import find_weights
    return find_weights(folder or None, names, check_size=False)


def check_weights(graph) -> None:
    """Resolve every stage's required model files; one MissingWeightsError for all."""
    from lipgraph.models.weight_finder import MissingWeightsError, resolve_weights
    by_dir: dict = {}
    for spec in graph.stages.values():
        need = getattr(spec.cls, "required_weights", None)
        if need is None:
            continue
        names = need(spec.params)
        if names:
            by_dir.setdefault(spec.params.get("weights") or None, []).extend(names)
    errors = []
    for folder, names in by_dir.items():
        try:
            resolve_weights(folder, names)
        except MissingWeightsError as exc:
            errors.append(exc)
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise MissingWeightsError("\n".join(str(e) for e in errors),
                                  [m for e in errors for m in e.missing],
                                  {k: v for e in errors for k, v in e.looked.items()})


VAE_FILES = ["sd_vae_config", "sd_vae_weights"]


class VAEStageChecks:
    """The param and weights checks of the stages that run the shared VAE."""
    random_weights = {"vae": "vae"}

    @classmethod
    def validate_params(cls, params):
        from ._torch import check_device_params
        return check_device_params(params)

    @classmethod
    def required_weights(cls, params):
        return [] if params["vae"] else list(VAE_FILES)


def load_shared_vae(stage):
    from lipgraph.models.vae import load_vae

    from ._torch import resolve_device, resolve_dtype, shared_model
    device = resolve_device(stage.p["device"])
    dtype = resolve_dtype(stage.p["dtype"], device)
    folder = stage.p["vae"] or os.fspath(resolve(stage, VAE_FILES)["sd_vae_config"].parent)
    return shared_model(("vae", os.path.abspath(folder), device, str(dtype)),
                        lambda: load_vae(folder, device=device, dtype=dtype))
