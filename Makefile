# Everything needs only python3 and make: `make install` builds .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck redis pytest demo serve bench fuzz mutate soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: install
	$(BIN)/mypy --strict src

pytest: install
	$(BIN)/python -m pytest -q

test: lint typecheck redis pytest

# The DPoP replay-store tests run a real redis-server (Debian's package) on loopback.
redis:
	command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)

demo: install
	$(BIN)/python examples/demo.py

serve: install
	$(BIN)/python examples/demo.py --serve

# Benchmarks (not part of make test): peers come from the bench extra, wrk from Debian.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk unavailable: HTTP throughput is skipped"
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/interference.py
	$(BIN)/python bench/jwks.py
	$(BIN)/python bench/mcp_auth.py
	if command -v wrk >/dev/null; then $(BIN)/python bench/throughput.py; fi

# Long property-based fuzzing, then a million mutated inputs (minutes); prints what was tried.
fuzz: install
	$(BIN)/python bench/fuzz.py
	$(BIN)/python bench/mutfuzz.py --inputs 1000000 --workers 2

# Mutation testing of the decision modules (bench/mutate.py): kill ratio and every survivor.
mutate: install redis
	$(BIN)/python bench/mutate.py --workers 2

# Ten minutes of paced mixed load on the four examples (FastAPI, Flask, Django, MCP) under their
# real servers, through key rotation, an issuer outage and a Redis restart (needs wrk, redis-server).
soak: install redis
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
