"""Stage types available to graph files, by name.

Each entry maps a `type:` name to ``module:Class``; modules are imported only when a graph
uses the type (spawned processes import them by name).
"""

STAGE_TYPES = {
    # engine building blocks
    "merge": "stages.merge:Merge",
    # synthetic stages for tests and benchmarks of the engine
    "synthetic_source": "stages.synthetic:SyntheticSource",
    "synthetic_map": "stages.synthetic:SyntheticMap",
    "synthetic_router": "stages.synthetic:SyntheticRouter",
    "synthetic_batch_map": "stages.synthetic:SyntheticBatchMap",
    "synthetic_rebatch": "stages.synthetic:SyntheticRebatch",
    "synthetic_unbatch": "stages.synthetic:SyntheticUnbatch",
    "synthetic_sink": "stages.synthetic:SyntheticSink",
}
