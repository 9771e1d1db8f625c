"""The YAML presets shipped with facestream, read as package data (``facestream presets`` lists them)."""
