"""`python -m orchestration` is the `progress-refresh` command."""

from orchestration.launcher import main

main()
