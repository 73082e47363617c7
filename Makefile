# latentd: `make run` starts the service on this machine, `make test` runs the test suite.
# Both first prepare .venv (Python 3.11, pinned dependencies); that step is a no-op when
# nothing changed. See scripts/install.sh and scripts/run.py.

VENV_PYTHON := .venv/bin/python

.PHONY: run test lint install help bench

help:
	@echo "make run     start Redis, the workers and the API on http://127.0.0.1:$${LATENTD_PORT:-8000}"
	@echo "make test    run the test suite"
	@echo "make lint    ruff, and mypy on api/ shared/ worker/"
	@echo "make bench   service vs direct pipeline: overhead per job, notification, reads/submits per s (wrk), make run to ready, worker memory (BENCH_ARGS=...); batching gain (BATCHING_ARGS=...)"
	@echo "make install create .venv and install the pinned dependencies"

install:
	@scripts/install.sh

# Redis is started by the launcher unless LATENTD_REDIS_URL points at one already.
run:
	@scripts/install.sh $(if $(LATENTD_REDIS_URL),,--redis-server)
	$(VENV_PYTHON) scripts/run.py

# The suite starts its own redis-server on a free port.
test:
	@scripts/install.sh --redis-server --test-tools
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	@scripts/install.sh
	.venv/bin/ruff check .
	.venv/bin/mypy

# Starts its own service on free ports and prints measured ratios (never asserted), e.g.
# make bench BENCH_ARGS="--model emoji --jobs 5" BATCHING_ARGS="--model emoji". See
# bench/README.md.
bench:
	@scripts/install.sh --redis-server
	$(VENV_PYTHON) -m bench.service_overhead $(BENCH_ARGS)
	$(VENV_PYTHON) -m bench.batching $(BATCHING_ARGS)
	$(VENV_PYTHON) -m bench.png
