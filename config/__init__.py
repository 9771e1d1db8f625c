"""The YAML presets shipped with facestream (``facestream presets`` lists them)."""

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent
