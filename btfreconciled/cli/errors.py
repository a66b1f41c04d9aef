"""What subcommands raise for a user-facing failure, and the exit statuses they return.

Kept out of main.py: `python -m btfreconciled.cli.main` runs main.py as __main__, and a
subcommand importing `.main` would get a second copy whose CliError the first never catches.
"""

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""
