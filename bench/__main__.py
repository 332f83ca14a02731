"""`python -m bench --sizes S,M --repeat 5`: see bench/README.md."""

import sys

from bench.cli import main

sys.exit(main())
