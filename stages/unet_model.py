"""Which lip-sync model a graph runs (`musetalk` or `latentsync`), decided by its surgical
UNet stage's `model` param.

Each UNet was trained on its own inputs: MuseTalk on a plain face crop and all Whisper hidden
states; LatentSync on an aligned face with its own mask and the last hidden state before the
final LayerNorm. Stages whose params say `auto` take what the graph's `surgical_unet` stage
needs (its model, plus MuseTalk when it falls back to it), so switching the model is one
param: `--set unet.model=latentsync`.
"""
from __future__ import annotations


def unet_params(graph) -> dict | None:
    """Params of the graph's surgical_unet stage (None if it has none)."""
    return next((spec.params for spec in graph.values() if spec.type == "surgical_unet"), None)


def graph_models(graph) -> list[str]:
    """The models a graph needs in priority order: its UNet's, then its fallback's."""
    p = unet_params(graph)
    if p is None:
        return ["musetalk"]
    from .unets import unet_class
    models = [unet_class(p["model"]).name]
    if p.get("fallback") == "musetalk" and "musetalk" not in models:
        models.append("musetalk")
    return models


def unet_resolution(graph) -> int:
    """Face size of the LatentSync UNet: 256 for v1.5, 512 for v1.6."""
    p = unet_params(graph) or {}
    return 512 if str(p.get("version", "1.5")) == "1.6" else 256


def bind_auto(then=None, **rules):
    """A stage's `bind`: each `auto` param named in `rules` becomes rule(the graph's models);
    then `then(params, graph)`, if given, binds the rest."""
    def bind(cls, params, graph, notes):
        for key, rule in rules.items():
            if params[key] == "auto":
                params[key] = rule(graph_models(graph))
        return then(params, graph) if then else params
    return classmethod(bind)
