"""Regenerate the result tables of README.md, docs/*.md and benchmarks/README.md from the
results files.

Every block of these documents between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` is replaced by the content of ``benchmarks/results/NAME.md``, so
that the tables in the documents are the files a benchmark wrote, never hand-edited copies.

    python benchmarks/readme_tables.py              # every block
    python benchmarks/readme_tables.py compare      # only the named blocks
    python benchmarks/readme_tables.py --check      # exit 1 when a block is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
#: The documents whose results blocks are regenerated: the README, the docs pages and the
#: full record.
DOCUMENTS = (README, *sorted((HERE.parent / "docs").glob("*.md")), HERE / "README.md")
RESULTS = HERE / "results"
#: A results block: its opening marker, its content, the matching closing marker.
BLOCK = re.compile(
    r"(?P<open><!-- results:(?P<name>[\w.-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /results:(?P=name) -->)",
    re.DOTALL,
)


def blocks(text: str) -> dict[str, str]:
    """``{NAME: content}`` of every results block in ``text``."""
    return {match["name"]: match["body"] for match in BLOCK.finditer(text)}


def render(text: str, results: Path = RESULTS, names: set[str] | None = None) -> str:
    """``text`` with each results block (only those in ``names`` when given) holding
    ``results/NAME.md``, which must exist.

    Raises
    ------
    FileNotFoundError
        When a block's results file is missing.
    """

    def fill(match: re.Match) -> str:
        if names is not None and match["name"] not in names:
            return match[0]
        content = (results / f"{match['name']}.md").read_text()
        ending = "" if content.endswith("\n") else "\n"
        return match["open"] + content + ending + match["close"]

    return BLOCK.sub(fill, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="blocks to regenerate (default: all)")
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    args = parser.parse_args()
    texts = {path: path.read_text() for path in DOCUMENTS}
    unknown = set(args.names) - {name for text in texts.values() for name in blocks(text)}
    if unknown:
        sys.exit(f"no results block in {[p.name for p in DOCUMENTS]} for {sorted(unknown)}")
    stale = []
    for path, text in texts.items():
        updated = render(text, names=set(args.names) or None)
        changed = sorted(n for n, body in blocks(updated).items() if blocks(text)[n] != body)
        stale += [f"{path.relative_to(HERE.parent)}:{name}" for name in changed]
        if not args.check and changed:
            path.write_text(updated)
    if args.check:
        if stale:
            sys.exit(f"stale blocks: {stale} (run python benchmarks/readme_tables.py)")
        return
    print(f"regenerated: {stale or 'nothing changed'}")


if __name__ == "__main__":
    main()
