"""MkDocs hooks (mkdocs.yml `hooks:`): committed result files the pages link to.

Pages link images and reports under `results/` as `../results/...`, which is right where the
markdown is read on its own (GitHub, an editor). For the site, those files are added to the build
from the repository and the links are read relative to the site's root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(\.\./(results/[^)\s]+)\)")


def _linked() -> set[str]:
    found: set[str] = set()
    for page in (ROOT / "docs").glob("*.md"):
        found.update(LINK.findall(page.read_text(encoding="utf-8")))
    return found


def on_files(files: Files, config: Any) -> Files:
    for rel in sorted(_linked()):
        if (ROOT / rel).is_file():  # a missing one is left to --strict's link check
            files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return LINK.sub(r"](\1)", markdown)
