"""Every docstring example in the package runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = (
    "ponder",
    "ponder.models",
    "ponder.models.engine",
    "ponder.serve",
    "ponder.environments",
    "ponder.memory",
    "ponder.search",
    "ponder.agents",
    "ponder.training",
)


def _modules() -> list[str]:
    names = set(PACKAGES)
    for pkg in PACKAGES:
        path = importlib.import_module(pkg).__path__
        names |= {m.name for m in pkgutil.iter_modules(path, pkg + ".") if not m.name.endswith("__main__")}
    return sorted(names)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
