"""``streamsentinel demo``: real streaming traffic through the real SDK, with streamsentinel on, and an
accounting of what the server did beside what streamsentinel counted."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
