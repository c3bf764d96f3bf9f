"""The ``fedsilo`` command line: parses, calls the library, renders. No logic of its own."""

from fedsilo.cli._app import app, main

__all__ = ["app", "main"]
