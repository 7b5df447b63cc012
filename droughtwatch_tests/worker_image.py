"""What an environment built without TensorFlow lacks (``docker build --build-arg TF=none``), and
a way to run Python as if it were such an environment.

:func:`tensorflow_side` resolves uv.lock twice, from the project's dependencies plus the extras
the image installs, with and without the ``cpu`` extra: the distributions only the second has are
what a TF=none image does not contain. :data:`BLOCKER` is a preamble for ``python -c`` that makes
importing any of their modules fail as it would there (ModuleNotFoundError), so a test can prove
a code path works in the slim image without building it.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _closure(lock: dict, extras: tuple[str, ...]) -> set[str]:
    packages = {p["name"]: p for p in lock["package"]}
    [project] = [p for p in lock["package"] if p.get("source", {}).get("editable") == "."]
    todo = list(project["dependencies"])
    for extra in extras:
        todo += project["optional-dependencies"][extra]
    seen: set[str] = set()
    while todo:
        dep = todo.pop()
        name = dep["name"]
        package = packages[name]
        for extra in dep.get("extra", []):
            todo += package.get("optional-dependencies", {}).get(extra, [])
        if name not in seen:
            seen.add(name)
            todo += package.get("dependencies", [])
    return seen


def tensorflow_side(extra: str = "cpu") -> set[str]:
    """Distributions a TF=cpu (or gpu) image installs and a TF=none image does not."""
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return _closure(lock, ("deploy", extra)) - _closure(lock, ("deploy",))


def blocked_modules(distributions: set[str]) -> list[str]:
    """The top-level modules only those distributions provide in this environment."""
    wanted = {d.lower().replace("_", "-") for d in distributions}
    return sorted(
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if all(d.lower().replace("_", "-") in wanted for d in dists) and module.isidentifier()
    )


def blocker(modules: list[str]) -> str:
    """Python source that, run first, makes importing any of `modules` (or their submodules) fail
    with ModuleNotFoundError, as in an environment that does not have them."""
    return f"""
import importlib.abc, sys
_BLOCKED = frozenset({modules!r})
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""
