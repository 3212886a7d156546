"""Real text for the pre-training sources, gathered from files whose licences allow shipping them.

Where each part comes from (recorded again in data/SOURCES.md by build_data.py):
- Python documentation (Debian package python3.11-doc, reST sources): PSF licence.
- Python standard library source of the running interpreter: PSF licence.
- Licence texts in /usr/share/common-licenses (Debian base-files): the licences themselves allow
  verbatim copying.
- French, German and Spanish manual pages (Debian manpages-fr/-de/-es, rendered by `man`): GPL-3+.

Every function yields documents (docs/design.md, contract 1) in a sorted, reproducible order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from pathlib import Path
from typing import Iterator

PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
COMMON_LICENSES = Path("/usr/share/common-licenses")
MAN_ROOT = Path("/usr/share/man")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_REPOSITORIES = ["json", "email", "asyncio", "logging", "http", "concurrent", "importlib", "urllib",
                     "xml/dom", "wsgiref", "sqlite3", "zoneinfo", "tomllib", "html", "collections"]
_REST_NOISE = re.compile(r"^\s*(\.\. [a-z-]+::.*|:[a-z-]+:.*)$")
_REST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def rest_to_prose(text: str) -> str:
    """Strip reST directives and roles so the docs read like plain web prose."""
    lines = [line for line in text.splitlines() if not _REST_NOISE.match(line)]
    text = _REST_ROLE.sub(r"\1", "\n".join(lines))
    text = re.sub(r"^[=\-~^*#+\"']{3,}\s*$", "", text, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def pydoc_pages(sections: list[str], source: str) -> Iterator[dict]:
    for section in sections:
        for path in sorted((PYDOC / section).rglob("*.rst.txt")):
            text = rest_to_prose(path.read_text(encoding="utf-8", errors="replace"))
            if len(text) > 200:
                rel = path.relative_to(PYDOC).as_posix()
                yield {"id": f"pydoc/{rel}", "text": text, "source": source, "origin": "python3.11-doc", "license": "PSF-2.0"}


def pydoc_books() -> Iterator[dict]:
    """Whole documentation sections joined page by page: long, book-like documents."""
    for section in ["tutorial", "reference", "howto", "faq", "library"]:
        pages = [rest_to_prose(p.read_text(encoding="utf-8", errors="replace"))
                 for p in sorted((PYDOC / section).rglob("*.rst.txt"))]
        # library/ is large: cut it into volumes of about 1 MB so each stays a long but bounded document
        volume, size, number = [], 0, 1
        for page in pages:
            volume.append(page)
            size += len(page)
            if size > 1_000_000:
                yield _book(section, number, volume)
                volume, size, number = [], 0, number + 1
        if volume:
            yield _book(section, number, volume)


def _book(section: str, number: int, pages: list[str]) -> dict:
    return {"id": f"book/python-{section}-{number}", "text": "\n\n".join(pages), "source": "books",
            "origin": "python3.11-doc", "license": "PSF-2.0"}


def stdlib_modules(limit_bytes: int) -> Iterator[dict]:
    """Single stdlib modules (top-level .py files), one document each, up to a byte budget."""
    total = 0
    for path in sorted(STDLIB.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > limit_bytes:
            break
        total += len(text)
        yield {"id": f"stdlib/{path.name}", "text": text, "source": "code", "origin": "cpython-3.11", "license": "PSF-2.0"}


def stdlib_repositories() -> Iterator[dict]:
    """Whole stdlib packages concatenated file by file, each file under a path header."""
    for package in CODE_REPOSITORIES:
        root = STDLIB / package
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts and "test" not in p.name)
        parts = [f"# ===== {p.relative_to(STDLIB).as_posix()} =====\n{p.read_text(encoding='utf-8', errors='replace')}"
                 for p in files]
        if parts:
            yield {"id": f"repo/cpython/{package}", "text": "\n".join(parts), "source": "code-repositories",
                   "origin": "cpython-3.11", "license": "PSF-2.0"}


def licence_texts() -> Iterator[dict]:
    for path in sorted(COMMON_LICENSES.iterdir()):
        if path.is_file() and not path.is_symlink():
            yield {"id": f"license/{path.name}", "text": path.read_text(encoding="utf-8", errors="replace").strip(),
                   "source": "domain", "origin": "debian base-files", "license": "verbatim copying permitted"}


def man_pages(languages: list[str], per_language: int) -> Iterator[dict]:
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0")
    for lang in languages:
        pages = sorted((MAN_ROOT / lang / "man1").glob("*.1.gz"))[:per_language]
        for page in pages:
            out = subprocess.run(["man", "-l", str(page)], capture_output=True, env=env, text=True, errors="replace")
            text = re.sub(r".\x08", "", out.stdout).strip()
            if len(text) > 300:
                yield {"id": f"man/{lang}/{page.name[:-3]}", "text": text, "source": "multilingual", "lang": lang,
                       "origin": f"manpages-{lang}", "license": "GPL-3.0-or-later"}
