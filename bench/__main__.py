"""`python -m bench [--sizes S,M …]`, `python -m bench workers …`, `python -m bench soak …`,
`python -m bench compare --against <commit>`, `python -m bench profile …`: see bench/README.md."""

import sys


def _main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "workers":
        from bench.workers import main

        return main(sys.argv[2:])
    if command == "compare":
        from bench.compare import main

        return main(sys.argv[2:])
    if command == "profile":
        from bench.profile import main

        return main(sys.argv[2:])
    if command == "soak":
        from bench.soak import main

        return main(sys.argv[2:])
    from bench.cli import main

    return main()


sys.exit(_main())
