"""The shipped presets: YAML files in ``facestream.config``, read as package data.

Kept apart from the settings schema, which imports every stage: listing presets stays instant.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.abc import Traversable

from facestream.pipeline.config import load_yaml


def _folder() -> Traversable:
    return resources.files("facestream.config")


def is_preset(name: str) -> bool:
    return bool(re.fullmatch(r"[\w-]+", name)) and preset_path(name).is_file()


def preset_path(name: str) -> Traversable:
    """The YAML file of a shipped preset."""
    return _folder() / f"{name}.yaml"


def list_presets() -> dict[str, str]:
    """Shipped preset names and their one-line descriptions.

    Example:
        >>> "offline" in list_presets()
        True
    """
    out = {}
    for path in sorted(_folder().iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        data = load_yaml(path)
        desc = str(data.get("description", "")).strip()
        out[path.name[: -len(".yaml")]] = desc.splitlines()[0] if desc else ""
    return out
