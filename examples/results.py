"""The markdown results file that several scripts share: each rewrites its own section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "RESULTS-integrations.md"
TITLE = """# Integrations: measured

Written by the scripts named in each section (each rewrites its own section only); medians
over seeds. On the project's 2-core machine, one core per script.
"""


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section `name` (between its markers) of `path`, keeping the others."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else TITLE
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
