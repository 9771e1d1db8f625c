"""facestream: detect, track, re-identify and swap, anonymise or annotate faces in video."""

__version__ = "0.1.0"
