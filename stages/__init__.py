"""The pipeline's stage types, registered by name when this package is imported (the
command line imports it).

Each entry maps a `type:` name to ``module:Class``; modules are imported only when a graph
uses the type (spawned processes import them by path). The synthetic stages of the engine's
tests and benchmarks (`synthetic.py`, `standins.py`) are not registered here: those that
use them register them.
"""
from lipgraph.graph.registry import register

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
    "face_join": "lipgraph.stages.face_join:FaceJoin",
    "mux": "lipgraph.stages.mux:Mux",
}

for _name, _target in STAGE_TYPES.items():
    register(_name, _target)

