"""Sphinx configuration for the trio-mqtt docs (Markdown pages via myst-parser)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# The API reference (api.md) imports trio_mqtt: from this checkout, with its dependencies
# installed (`pip install -e '.[docs]'`, as `nox -s docs` does).
sys.path.insert(0, str(_ROOT))
# Read the version without importing trio_mqtt.
_VERSION = re.search(
    r'__version__\s*=\s*"([^"]+)"', (_ROOT / "trio_mqtt" / "_version.py").read_text()
)
assert _VERSION is not None, "trio_mqtt/_version.py has no __version__"

project = "trio-mqtt"
author = "trio-mqtt developers"
copyright = "2026, trio-mqtt developers"
release = _VERSION.group(1)
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The API reference: signatures keep their type hints; members in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"trio-mqtt {release}"
