"""The command line (`pgolf ...`, the top layer): argument parsing, reports, submission folders.

`main` is the console script's entry point (`pgolf = "pgolf.cli:main"`); the exit statuses are part of its contract.
"""

from .commands import EXIT_DIVERGED, EXIT_FAILED, EXIT_OVER_LIMIT, EXIT_USAGE, main

__all__ = ["EXIT_DIVERGED", "EXIT_FAILED", "EXIT_OVER_LIMIT", "EXIT_USAGE", "main"]
