"""``python -m pixgen``: the command-line interface."""

from pixgen.cli import main

main()
