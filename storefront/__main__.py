"""python -m storefront [--host 127.0.0.1] [--port 3000] [--api-url http://127.0.0.1:8000]"""

import argparse
import os

from storefront import create_app

parser = argparse.ArgumentParser(prog="python -m storefront", description="Serve the demo shop.")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=int(os.environ.get("STOREFRONT_PORT", "3000")))
parser.add_argument(
    "--api-url",
    default=os.environ.get("STOREFRONT_API_URL", "http://127.0.0.1:8000"),
    help="where monime-checkout answers (%(default)s)",
)
args = parser.parse_args()
create_app(args.api_url).run(host=args.host, port=args.port, threaded=True)
