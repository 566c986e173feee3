# The two commands of README.md: `make demo` (install + run the main job), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# xdist workers for `make test`: most broker tests wait on Kafka, workers and the trainer, so
# three share this 2-core machine's CPU well (docs/development.md has the measurements)
TEST_WORKERS ?= 3

.PHONY: install test test-fast lint docs demo evaluate bench clean

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

# The documentation site: the references regenerated from the code, then a strict build
# (a broken link or page fails). `mkdocs serve` shows it locally.
docs: install
	$(BIN)/python -m stream_ae.tools.docgen docs/reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d site

# pytest exits 5 when it collects no test: that is not a failure of the suite's code.
# Everything: lint, then every test and doctest, each xdist worker with its own local broker.
test: lint
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d $$(mktemp -d)
	$(BIN)/pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# The inner loop: no broker, no Prometheus, no model trained for more than a few seconds.
test-fast: install
	$(BIN)/pytest -q -m "not kafka and not prometheus and not slow" -n 2 $(PYTEST_ARGS)

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
