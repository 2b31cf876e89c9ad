"""Stage types available to graph files, by name.

Each entry maps a `type:` name to ``module:Class``; modules are imported only when a graph
uses the type (spawned processes import them by name).
"""

STAGE_TYPES = {
    # engine building blocks
    "merge": "stages.merge:Merge",
    # lip-sync pipeline
    "video_source": "stages.video_source:VideoSource",
    "cache_read": "stages.prepared_cache:CacheRead",
    "cache_write": "stages.prepared_cache:CacheWrite",
    "audio_source": "stages.audio_source:AudioSource",
    "face_detect": "stages.face_detect:FaceDetect",
    "face_landmarks": "stages.face_landmarks:FaceLandmarks",
    "face_crop": "stages.face_crop:FaceCrop",
    "face_align": "stages.face_align:FaceAlign",
    "whisper_features": "stages.whisper_features:WhisperFeatures",
    "batch_builder": "stages.batch_builder:BatchBuilder",
    "vae_encode": "stages.vae_encode:VAEEncode",
    "surgical_unet": "stages.surgical_unet:SurgicalUNet",
    "vae_decode": "stages.vae_decode:VAEDecode",
    "face_parse": "stages.face_parse:FaceParse",
    "blend": "stages.blend:Blend",
    "mux": "stages.mux:Mux",
    # synthetic stages for tests and benchmarks of the engine
    "synthetic_source": "stages.synthetic:SyntheticSource",
    "synthetic_map": "stages.synthetic:SyntheticMap",
    "synthetic_router": "stages.synthetic:SyntheticRouter",
    "synthetic_tee": "stages.synthetic:SyntheticTee",
    "synthetic_zip": "stages.synthetic:SyntheticZip",
    "synthetic_batch_map": "stages.synthetic:SyntheticBatchMap",
    "synthetic_rebatch": "stages.synthetic:SyntheticRebatch",
    "synthetic_unbatch": "stages.synthetic:SyntheticUnbatch",
    "synthetic_sink": "stages.synthetic:SyntheticSink",
}
