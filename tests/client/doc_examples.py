"""The copy-paste examples of docs/integrations/, read from the pages so that tests run them
as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"


def doc_example(page: Path) -> str:
    """The page's first Python block: its copy-paste example."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if not blocks:
        raise AssertionError(f"{page} has no python block")
    return str(blocks[0])
