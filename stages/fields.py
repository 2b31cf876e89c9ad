"""The lip-sync pipeline's frame fields: every key an `Item.data` or `Batch.data` carries,
declared once (name, type, meaning). Stages name what they read and write from here
(`names(...)`), and the per-field flags below are the one source of the lists stages keep
(what the prepared cache stores, what batch_builder stacks, what blend drops, what a UNet
fallback discards). The table is documented in docs/params.md ("Frame fields").
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: str
    meaning: str
    cached: bool = False       # stored per source frame by the prepared-video cache
    stacked: str = ""          # batch_builder stacks the frames' values into this batch field
    context: bool = False      # ... with a LatentSync window's context frames first
    float32: bool = False      # ... as float32
    working: bool = False      # per-frame working data blend drops once the face is pasted
    unet_input: str = ""       # prepared for this UNet only: dropped when the window falls back


TABLE = (
    # from the sources
    Field("frame", "uint8 [H, W, 3] RGB", "the video frame; blend pastes the face into it"),
    Field("src_index", "int", "the decoded source frame this output frame shows"),
    Field("preroll", "bool", "context only (before a resumed run's first output frame): "
                             "bypasses the models, not written"),
    Field("pcm", "float32 [n]", "audio samples, 16 kHz mono (the audio stream's items)"),
    Field("dub_pcm", "dict {track id: float32 [n]}", "each speaker's own dub, the same span as "
                                                      "`pcm` (audio.dubs)"),
    # video-side work (per face frame)
    Field("cached", "bool", "the frame's prepared work came from the cache", working=True),
    Field("box", "float32 [5] or None", "detector face box x1, y1, x2, y2, score; None: a "
                                        "cutaway", cached=True),
    Field("face_id", "int", "the face track chosen on this frame (detect.face: track ids)",
          cached=True),
    Field("face_slot", "int", "which of its frame's dubbed faces this item is (0 ..); "
                              "only on frames where several faces are dubbed"),
    Field("face_slots", "int", "how many faces of this frame are dubbed (items of one index)"),
    Field("lm68", "float32 [68, 2]", "FAN landmarks, iBUG order", working=True),
    Field("lm106", "float32 [106, 2]", "InsightFace 2d106det landmarks", working=True),
    Field("face_box", "int32 [4]", "MuseTalk's face box (from the 68 landmarks)", cached=True),
    Field("crop", "uint8 [256, 256, 3]", "MuseTalk's face crop", stacked="crops", working=True),
    Field("aligned", "uint8 [R, R, 3]", "LatentSync's aligned face (R 256 or 512)", cached=True,
          stacked="aligned", context=True, working=True),
    Field("affine", "float64 [2, 3]", "frame -> aligned box transform", cached=True, working=True),
    Field("align", "str", "alignment: fan or insightface", cached=True, working=True),
    Field("audio", "float32 [T, D]", "MuseTalk's Whisper tokens (batch: stacked)",
          stacked="audio", float32=True, working=True),
    Field("audio_ls", "float32 [T, D]", "LatentSync's Whisper features (batch: stacked, "
                                        "context first)",
          stacked="audio_ls", context=True, float32=True, working=True),
    Field("latents", "[8, 32, 32] (batch: tensor [B, 8, 32, 32])",
          "MuseTalk's VAE latents: masked + reference crop; per frame kept for the cache",
          cached=True, stacked="cached_latents", working=True),
    Field("ls_latents", "[8, h, w]", "LatentSync's masked + reference latents of one frame, "
                                     "kept for the cache",
          cached=True, stacked="cached_ls_latents", context=True, working=True),
    # batches (batch_builder and after)
    Field("n_context", "int", "context frames at the front of a window's stacked inputs"),
    Field("crops", "uint8 [B, 256, 256, 3]", "the batch's MuseTalk crops"),
    Field("cached_latents", "[B, 8, 32, 32]", "every frame's MuseTalk latents, from the cache"),
    Field("cached_ls_latents", "[F, 8, h, w]", "every frame's LatentSync latents, from the cache"),
    Field("ls_masked", "tensor [F, 4, h, w]", "LatentSync's masked-face latents",
          unet_input="latentsync"),
    Field("ls_ref", "tensor [F, 4, h, w]", "LatentSync's reference latents",
          unet_input="latentsync"),
    Field("ls_mask", "tensor [F, 1, h, w]", "LatentSync's mask at latent size",
          unet_input="latentsync"),
    Field("pred", "tensor [B, 4, h, w]", "the UNet's predicted latents (new frames only)"),
    Field("model", "str", "the model that made the face: musetalk or latentsync "
                               "(batch, then each frame)"),
    # the face and its paste-back
    Field("face", "uint8 [S, S, 3]", "the decoded face", working=True),
    Field("crop_box", "int32 [4]", "the region face_parse parsed (MuseTalk paste-back)",
          cached=True, working=True),
    Field("mask", "float32 [h, w]", "the paste-back mask in crop_box", cached=True, working=True),
    Field("edit", "list [4]", "the box of every pixel blend may have changed"),
    Field("restore", "dict", "what redraws LatentSync's mouth region (the sidecar's restore)"),
    Field("faces", "list of dict", "every face dubbed on the frame: id, face, edit, model, "
                                   "restore (face_join; the sidecar's faces)"),
)
FIELDS = {f.name: f for f in TABLE}


def names(*wanted: str) -> tuple[str, ...]:
    """Field names checked against the table (a typo fails at import)."""
    unknown = [n for n in wanted if n not in FIELDS]
    if unknown:
        raise KeyError(f"not in the frame field table (stages/fields.py): {', '.join(unknown)}")
    return wanted


# the lists stages keep, derived from the flags
CACHED = tuple(f.name for f in TABLE if f.cached)
STACKED = {f.name: f.stacked for f in TABLE if f.stacked}
WITH_CONTEXT = tuple(f.name for f in TABLE if f.stacked and f.context)
STACKED_FLOAT32 = frozenset(f.name for f in TABLE if f.float32)
WORKING = tuple(f.name for f in TABLE if f.working)


def unet_inputs(model: str) -> tuple[str, ...]:
    """The batch fields vae_encode prepares for one UNet only."""
    return tuple(f.name for f in TABLE if f.unet_input == model)
