# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
# `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SRC    := $(wildcard src tests benchmarks docs/hooks)

.PHONY: demo test lint typecheck unit docs system-deps bench clean fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests talk to real peers (the openssl and GnuTLS CLIs, curl) and build network labs
# (iproute2).
# Install them from Debian's packages when missing and we are root; otherwise say so
# (the tests that need them skip with a reason).
system-deps:
	@missing=""; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v gnutls-cli >/dev/null 2>&1 || missing="$$missing gnutls-bin"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them will skip"; \
	  else \
	    echo "warning: missing$$missing (not root); tests that need them will skip"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/python -m tcpls.apps.demo

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml): any warning (a broken link, a missing page, an
# unresolved reference) fails the build. `$(BIN)/mkdocs serve` serves it while you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: lint typecheck docs unit

# A longer fuzzing run of one target: make fuzz T=session S=600 (see tests/fuzz/README.md).
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.run --skip-known $(T) -max_total_time=$(or $(S),300) \
	  /tmp/tcpls-fuzz-$(T) tests/fuzz/corpus/$(T)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist site src/*.egg-info
