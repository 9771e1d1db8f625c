"""The face library the stages use: the Face record, model packs and engines, alignment and warps,
masks, tracking and identity, and media conversion. Nothing here runs a thread or knows the
pipeline's stages; the stages in ``facestream.stages`` wrap it."""
