"""python -m simulator [serve] [--port 8001] | trigger | sign | verify  (see simulator/cli.py)"""

import sys

from simulator.cli import main

sys.exit(main(sys.argv[1:]))
