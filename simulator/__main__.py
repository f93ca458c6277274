"""python -m simulator [--port 5001]"""

import argparse

from simulator import create_app

parser = argparse.ArgumentParser(description="Run the local Monime simulator.")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=5001)
args = parser.parse_args()
create_app().run(host=args.host, port=args.port, threaded=True)
