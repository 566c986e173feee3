# The two commands of README.md: `make demo` (install + run the main job), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint demo evaluate bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "stream-ae needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,eval]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check stream_ae trainer tests bench
	$(BIN)/mypy stream_ae trainer

# pytest exits 5 when it collects no test: that is not a failure of the suite's code.
test: lint
	$(BIN)/pytest -q -rs --durations=15 $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

demo: install
	$(BIN)/stream-ae demo

# The offline evaluation of README.md (../shared/data needed; about 25 min on 2 cores).
evaluate: install
	$(BIN)/stream-ae evaluate --out reports/eval

# The benchmarks whose figures README.md reports (each starts what it needs; no ../shared/).
bench: install
	$(BIN)/python -m bench.model_speed
	$(BIN)/python -m bench.throughput --events 150000 --sweep --variants ncae,ae --java
	$(BIN)/python -m bench.profile --events 150000 --variant ae
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.sharing
	$(BIN)/python -m bench.synthesis

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
