"""`python -m fmbench` runs the command line (`cli.main`, outside the library; nothing imports this module)."""

from __future__ import annotations

from cli.main import program

program()
