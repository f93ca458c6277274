# make dev          the service on SQLite against the local Monime simulator
# make test         every test, on SQLite and Postgres, installing what they need
# make docker-test  build the image and run it against Postgres and the simulator
# make bench        the service against bare Flask and pgbench, slow Monime, memory (bench/README.md)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test docker-test lint install bench

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

dev: install
	scripts/dev

test: install browser-tools proxy-tools interop-tools
	$(BIN)/pytest

# Debian's Chromium for the browser tests (Playwright drives it; its own browser download is
# not used). Without it, and without root, the browser tests skip loudly; under CI=true they fail.
.PHONY: browser-tools
browser-tools:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
		|| echo "!! could not install chromium: the browser tests will not run"

# Debian's nginx, which tests/test_slow_clients.py runs in front of gunicorn with
# deploy/nginx.conf. Without it the proxy tests skip loudly; under CI=true they fail.
.PHONY: proxy-tools
proxy-tools:
	@test -x /usr/sbin/nginx || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx) \
		|| echo "!! could not install nginx: the proxy tests will not run"

# Debian's node and npm, and monime-package from the npm registry at the version tests/interop/package-lock.json pins, for
# tests/test_interop.py. Without node and npm those tests skip loudly; under CI=true they fail.
.PHONY: interop-tools
interop-tools:
	@command -v npm >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm) \
		|| echo "!! could not install node and npm: the interop tests will not run"
	@(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error) \
		|| echo "!! could not install monime-package with npm: the interop tests will not run"

bench: install
	bench/run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

# buildah, podman and runc build and run the image without a Docker daemon;
# debootstrap makes the local base image (see tests/test_image.py).
.PHONY: docker-tools
docker-tools:
	dpkg -s buildah podman runc debootstrap >/dev/null 2>&1 \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y buildah podman runc debootstrap)

docker-test: install docker-tools
	$(BIN)/pytest -m docker tests/test_image.py
