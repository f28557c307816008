"""browser: the ``imago`` command line (browser/cli.py) and, with later issues,
the REPL, object inspector, boot menu and changes browser (prompt_toolkit).

Public API: ``main`` (the console script's entry point).
"""
from browser.cli import main

__all__ = ["main"]
