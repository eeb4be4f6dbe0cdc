"""Sphinx fixes for the site that no configuration value reaches.

sphinx-thebe 0.3 adds its inline configuration script on every `env-before-read-docs`, and Sphinx 7
keeps both copies (only scripts with a file name are de-duplicated), so every page declared
`const THEBE_JS_URL` twice and the browser logged a SyntaxError. Here each page keeps one copy of
each identical script.
"""
from __future__ import annotations

from typing import Any


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop repeated identical <script> entries (same file name or same inline body) from a page."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    kept = []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        # an inline script may be filed under None or "" as its file name
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app: Any) -> dict:
    """Register the fix; it changes no document, so builds stay parallel-safe."""
    # early: html-page-context stops at the first handler that returns a template name, and the
    # thebe scripts are on the page's list before any handler runs
    app.connect("html-page-context", _dedupe_scripts, priority=200)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
