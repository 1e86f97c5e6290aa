# The two commands of the README: `make run` and `make test`. Everything else helps them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
ARGS   ?=
REPORT_ARGS ?=

.PHONY: run test test-cluster up down status demo simulate chaos install system-deps lint docs clean bench bench-pipeline bench-reports bench-batch migration

run: install system-deps          ## start the whole stack and the console, simulate a small year through it, leave it running
	$(BIN)/e2c stack up $(ARGS)
	$(BIN)/e2c demo
	$(BIN)/e2c simulate --trainees 1000
	@echo "The stack is still running: 'make status' to look, 'make down' to stop it."
	@$(BIN)/e2c stack console

test: install system-deps         ## the whole suite against real Kafka, Redis and PostgreSQL
	$(BIN)/python -m pytest -m "not cluster_chaos" $(ARGS)

test-cluster: install system-deps  ## the chaos year on three Kafka nodes (minutes; CI runs it after make test)
	$(BIN)/python -m pytest -m cluster_chaos $(ARGS)

up: install system-deps
	$(BIN)/e2c stack up $(ARGS)

down: install
	$(BIN)/e2c stack down $(ARGS)

status: install
	$(BIN)/e2c stack status $(ARGS)

demo: install
	$(BIN)/e2c demo

lint: install
	$(BIN)/ruff check .

docs: install                     ## docs/asyncapi.json, docs/schemas/, docs/openapi/ and deploy/kubernetes/ from the code (ARGS=--check compares)
	$(BIN)/python -m deploy.contract_docs $(ARGS)
	$(BIN)/python -m deploy.kubernetes_manifests $(ARGS)

bench: bench-pipeline              ## the benchmarks (never tests): ARGS to the pipeline's (e.g. ARGS="--repeat 5"), REPORT_ARGS to the reports'
	$(MAKE) --no-print-directory bench-reports ARGS="$(REPORT_ARGS)"

bench-pipeline: install system-deps  ## raw aiokafka vs each stage (SQLite, PostgreSQL) vs lifecycle and its time per service, 1-3 instances, 3 brokers
	$(BIN)/python -m bench.pipeline $(ARGS)

bench-batch: install system-deps   ## one consumed batch per service's input, no broker (SQLite, PostgreSQL): records/s, CPU, statements per record, ratio to referrals (not a test)
	$(BIN)/python -m bench.profile_batch $(ARGS)

simulate: install
	$(BIN)/e2c simulate $(ARGS)

chaos: install system-deps         ## a whole year replayed under kills, a broker restart, Redis down, poison
	$(BIN)/python -m deploy.chaos $(ARGS)

bench-reports: install            ## finance report and CSV cost at 10k and 1M ledger lines; outcome reports at 1 and 10 years (not a test)
	$(BIN)/python -m bench.report_cost $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

system-deps:
	@bash deploy/install-system-deps.sh

migration: install                ## a service's next revision from its models: SERVICE=aids MESSAGE="..."
	$(BIN)/e2c db revision $(SERVICE) -m "$(MESSAGE)"

clean:
	rm -rf $(VENV) var
