"""Stage types available to graph files, by name.

Each entry maps a `type:` name to ``module:Class``; modules are imported only when a graph
uses the type (spawned processes import them by name).
"""

STAGE_TYPES = {
    # engine building blocks
    "merge": "lipgraph.stages.merge:Merge",
    # lip-sync pipeline
    "video_source": "lipgraph.stages.video_source:VideoSource",
    "cache_read": "lipgraph.stages.prepared_cache:CacheRead",
    "cache_write": "lipgraph.stages.prepared_cache:CacheWrite",
    "audio_source": "lipgraph.stages.audio_source:AudioSource",
    "face_detect": "lipgraph.stages.face_detect:FaceDetect",
    "face_landmarks": "lipgraph.stages.face_landmarks:FaceLandmarks",
    "face_crop": "lipgraph.stages.face_crop:FaceCrop",
    "face_align": "lipgraph.stages.face_align:FaceAlign",
    "whisper_features": "lipgraph.stages.whisper_features:WhisperFeatures",
    "batch_builder": "lipgraph.stages.batch_builder:BatchBuilder",
    "vae_encode": "lipgraph.stages.vae_encode:VAEEncode",
    "surgical_unet": "lipgraph.stages.surgical_unet:SurgicalUNet",
    "vae_decode": "lipgraph.stages.vae_decode:VAEDecode",
    "face_parse": "lipgraph.stages.face_parse:FaceParse",
    "blend": "lipgraph.stages.blend:Blend",
    "mux": "lipgraph.stages.mux:Mux",
    # synthetic stages for tests and benchmarks of the engine
    "synthetic_source": "lipgraph.stages.synthetic:SyntheticSource",
    "synthetic_map": "lipgraph.stages.synthetic:SyntheticMap",
    "synthetic_router": "lipgraph.stages.synthetic:SyntheticRouter",
    "synthetic_tee": "lipgraph.stages.synthetic:SyntheticTee",
    "synthetic_zip": "lipgraph.stages.synthetic:SyntheticZip",
    "synthetic_batch_map": "lipgraph.stages.synthetic:SyntheticBatchMap",
    "synthetic_rebatch": "lipgraph.stages.synthetic:SyntheticRebatch",
    "synthetic_unbatch": "lipgraph.stages.synthetic:SyntheticUnbatch",
    "synthetic_sink": "lipgraph.stages.synthetic:SyntheticSink",
}
