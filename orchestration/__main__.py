"""`python -m orchestration` is the `progress-refresh` command."""

from orchestration.cli import main

main()
