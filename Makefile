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

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check streamup tests
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
