"""Sphinx configuration of the deepbid documentation (``sphinx-build -W docs docs/_build``)."""

from __future__ import annotations

import sys
from pathlib import Path

from numpydoc.docscrape import FunctionDoc
from sphinx.util import logging

import deepbid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # readme_tables: the benchmark tables

project = "deepbid"
author = "the deepbid developers"
copyright = "2026, the deepbid developers"
version = release = deepbid.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinxarg.ext",
]
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
templates_path = ["_templates"]
exclude_patterns = ["_build", "jupyter_execute", "images/README.md"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# The tutorial runs at every build: an example that breaks, breaks the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_show_tb = True

autosummary_generate = True
autodoc_typehints = "none"  # numpydoc sections give the types, with shapes
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# A public docstring without its parameters or its return value fails the build.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01", "SS01"}
# OUTPUT_KEYS is data: its comment documents it, numpydoc has no sections for it
numpydoc_validation_exclude = {r"\.__init__$", r"\.with_traceback$", r"^deepbid\.OUTPUT_KEYS$"}

html_theme = "sphinx_book_theme"
html_title = f"deepbid {release}"
html_theme_options = {"repository_url": "", "use_repository_button": False}
html_static_path: list[str] = []


def _require_raises(app, what, name, obj, options, lines) -> None:
    """Fail the build when a public function or method has no Raises section.

    numpydoc validates parameters and returns but not raised errors; a user reads the
    Raises section to learn which exception to catch.
    """
    if what in ("function", "method") and name.startswith("deepbid."):
        if not FunctionDoc(obj)["Raises"]:
            logging.getLogger(__name__).warning(f"{name}: no Raises section")


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _require_raises)
