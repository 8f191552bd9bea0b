"""`python -m cli` runs the command line."""

from __future__ import annotations

from cli.main import program

program()
