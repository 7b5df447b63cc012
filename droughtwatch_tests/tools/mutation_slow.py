"""`make mutation-slow`: mutation testing of the modules only the training tests reach.

The registry assets run only inside a training: the tests that pin them train a model first
(tens of seconds a test), so `make mutation` leaves them out of its selection to fit its
budget. This runs mutmut on them alone, against those tests, in a copy of the working tree
under `build/mutation-slow/` (its own `mutants/`, so the two runs never mix):

- the copy holds the tracked and untracked-but-not-ignored files, as they are on disk;
- its `[tool.mutmut]` is the repository's, with `only_mutate` and the test selection replaced
  by `[tool.droughtwatch.mutation-slow]`'s.

The Makefile then runs mutmut there within MUTATION_BUDGET seconds, and `mutation_report`.
Results accumulate in the copy like `make mutation`'s: the next run carries on where the budget
ran out, unless the tests changed (mutmut then forgets its results: docs/testing.md). About
90 s a mutant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKDIR = REPO / "build" / "mutation-slow"


def toml_value(value: object) -> str:
    """A TOML literal for the values a [tool.mutmut] table holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def slow_config(pyproject: str) -> str:
    """`pyproject` with its [tool.mutmut] table replaced by the slow scope's."""
    data = tomllib.loads(pyproject)
    config = dict(data["tool"]["mutmut"])
    scope = data["tool"]["droughtwatch"]["mutation-slow"]
    config["only_mutate"] = scope["only_mutate"]
    config["pytest_add_cli_args_test_selection"] = scope["tests"]
    lines = pyproject.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "[tool.mutmut]")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    table = ["[tool.mutmut]\n", *(f"{k} = {toml_value(v)}\n" for k, v in config.items()), "\n"]
    return "".join([*lines[:start], *table, *lines[end:]])


def copy_tree(workdir: Path) -> None:
    """The working tree's files (tracked, and untracked ones git does not ignore) into
    `workdir`, replacing what an earlier copy had there; `workdir/mutants` is kept."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    for entry in workdir.iterdir():
        if entry.name != "mutants":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pyproject = workdir / "pyproject.toml"
    pyproject.write_text(slow_config(pyproject.read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="copy the working tree for the slow scope")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    args = parser.parse_args(argv)
    copy_tree(args.workdir)
    print(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
