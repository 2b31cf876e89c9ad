"""Checks made before a run starts, so a bad input fails in a second with one clear
message instead of after the models have loaded: every stage's files (inputs that exist
and are what they should be, an output folder that can be written) and every model file.
"""
from __future__ import annotations


class InputError(ValueError):
    """One or more stages' files are unusable; the message lists them all."""


def check_files(graph) -> None:
    problems = []
    for name, spec in graph.stages.items():
        problems += [f"stage '{name}': {msg}" for msg in spec.cls.check_files(spec.params)]
    if problems:
        raise InputError("\n".join(problems))


def preflight(graph) -> None:
    """Raise InputError (files) or MissingWeightsError (model files) before anything runs."""
    from ._weights import check_weights
    check_files(graph)
    check_weights(graph)
