# The two commands of the set-up promise: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= var
DOMAIN ?= hopital-a.test

.PHONY: run test lint typecheck pytest install clean dovecot

# pip, not python: a venv whose ensurepip failed (Debian without python3-venv) has a python
# and no pip, and must be made again once the package is there.
$(STAMP): pyproject.toml
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP) dovecot
	test -f $(DATA)/mssgate.toml || $(BIN)/mssgate init --data $(DATA) --domain $(DOMAIN)
	MSSGATE_CONFIG=$(DATA)/mssgate.toml $(BIN)/mssgate serve

# IMAP needs Dovecot: installed here when missing and run as root; otherwise `serve` says
# in one line what to install (or run with MSSGATE_IMAP__ENABLED=false).
dovecot:
	@command -v dovecot >/dev/null 2>&1 || test -x /usr/sbin/dovecot || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd dovecot-lmtpd; \
	    else echo "IMAP needs Dovecot: sudo apt-get install dovecot-imapd dovecot-lmtpd"; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy mssgate

# pytest exits 5 when it collected no test: make treats that as a failure, as it must (it
# does under pytest-xdist too). The tests run in PYTEST_WORKERS processes (pytest-xdist;
# `make pytest PYTEST_WORKERS=0` runs them in one): most of a test's time is spent waiting on
# the gateways, Dovecots and clients it starts, so twice the cores keeps the CPUs busy. Tests
# sharing something machine-wide are in one xdist_group (docs/performance.md, "Test suite").
# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE): every
# gateway a test starts would otherwise compile mssgate from source again, ~1 s each.
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
