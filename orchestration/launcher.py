"""The `progress-refresh` command's entry point. Loading the command line takes
a moment (Dagster, psycopg, rich); Ctrl-C meanwhile ends it as it does once the
command runs, with one line and exit 130, not a traceback of the imports."""

import sys


def main() -> None:
    try:
        from orchestration.cli import main as run_command
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    run_command()
