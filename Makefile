# The targets humans and CI share. `make demo` and `make test` do all set-up themselves.
.PHONY: setup lock demo test lint bench clean

setup:
	@bash scripts/setup.sh

# After a dependency change in pyproject.toml: re-pin (requirements*.lock) and install.
# `make lock UPGRADE=1` moves every pin to the newest release.
lock:
	@bash scripts/lock.sh

demo: setup
	.venv/bin/streamup demo

# Three pytest-xdist workers: most tests wait on real time (files growing, timeouts, outages),
# so three run side by side on two cores. `make test WORKERS=0` runs them one after another.
WORKERS ?= 3
test: setup
	.venv/bin/python -m pytest -q -n $(WORKERS) --dist loadgroup

lint: setup
	.venv/bin/ruff check streamup tests
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
