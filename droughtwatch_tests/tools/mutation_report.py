"""What `make mutation` found: mutmut's results per module, and the surviving mutants.

Reads `mutmut results --all true` (run in the repository root, after `mutmut run`) and prints a
Markdown table per module: killed (a test went red), survived (every selected test stayed
green), no tests (no selected test runs the function), timeout, not yet checked (the time
budget ran out first; the next `make mutation` carries on from there). `--survivors` adds the
diff of every surviving mutant (`mutmut show`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

MUTMUT = Path(sys.executable).with_name("mutmut")
LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+?)\s*$")
# mutmut's status names, in the table's order.
COLUMNS = ("killed", "survived", "no tests", "timeout", "not checked")


def module_of(name: str) -> str:
    """The module a mutant is in: `pkg.mod.x_fn__mutmut_3` -> `pkg.mod`."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def parse(text: str) -> dict[str, str]:
    """Mutant name -> status."""
    return {m["name"]: m["status"] for line in text.splitlines() if (m := LINE.match(line))}


def table(statuses: dict[str, str]) -> str:
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        by_module[module_of(name)][status] += 1
    total: Counter = Counter(statuses.values())
    rows = ["| module | mutants | " + " | ".join(COLUMNS) + " | score |"]
    rows.append("|" + "---|" * (len(COLUMNS) + 3))
    for module, counts in [*sorted(by_module.items()), ("**all**", total)]:
        tested = counts["killed"] + counts["survived"] + counts["timeout"]
        score = f"{(counts['killed'] + counts['timeout']) / tested:.0%}" if tested else "-"
        cells = [str(counts[c]) for c in COLUMNS]
        rows.append(f"| {module} | {sum(counts.values())} | " + " | ".join(cells) + f" | {score} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    args = parser.parse_args(argv)
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], capture_output=True, text=True, check=False
    )
    statuses = parse(out.stdout)
    if not statuses:
        print("no mutmut results here: run `make mutation` first", file=sys.stderr)
        return 1
    print(table(statuses))
    print("\nscore: killed (and timed out) over the mutants a selected test ran")
    survivors = sorted(n for n, s in statuses.items() if s == "survived")
    print(f"\n{len(survivors)} surviving mutants" + (":" if survivors else ""))
    for name in survivors:
        if args.survivors:
            shown = subprocess.run(
                [str(MUTMUT), "show", name], capture_output=True, text=True, check=False
            )
            print(shown.stdout.rstrip())
        else:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
