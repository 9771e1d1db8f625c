"""Every stage is a small class with a docstring example, and every docstring example in the
packages runs."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import facestream.facelib
import facestream.pipeline
import facestream.stages
from facestream.pipeline.stage import Stage

MODULES = [importlib.import_module(f"facestream.stages.{m.name}") for m in pkgutil.iter_modules(facestream.stages.__path__)]
EVERY_MODULE = [
    m.name for pkg in (facestream.pipeline, facestream.stages, facestream.facelib)
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
]


def test_every_stage_module_holds_stages_only_and_each_has_an_example():
    stages = []
    for module in MODULES:
        found = [c for _, c in inspect.getmembers(module, inspect.isclass)
                 if issubclass(c, Stage) and c.__module__ == module.__name__]
        assert found, f"{module.__name__} holds no stage"
        stages += found
    assert len(stages) == len(MODULES), "one stage per module"
    for stage in stages:
        assert ">>> " in (stage.__doc__ or ""), f"{stage.__name__} has no docstring example"


@pytest.mark.parametrize("name", EVERY_MODULE, ids=lambda n: n.removeprefix("facestream."))
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
