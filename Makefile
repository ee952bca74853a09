PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/local.yaml

.PHONY: run demo test deps test-deps kube-deps lint bench clean

$(BIN)/python:
	sh tests/infra/install-system-deps.sh base
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(VENV)/.deps
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.demo-deps: $(VENV)/.deps
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

deps: $(VENV)/.deps

test-deps: $(VENV)/.test-deps kube-deps
	sh tests/infra/install-system-deps.sh test
	sh tests/infra/install-ci-tools.sh
	sh tests/infra/install-browser.sh
	sh tests/infra/install-k8s-tools.sh

## kube-deps: kube-apiserver built once from Debian's kubernetes source (cached in ~/.cache), etcd, openssl
kube-deps:
	bash tests/infra/build-kube-apiserver.sh

## run: the controller with examples/local.yaml (a token and a callback secret are made for you unless set)
run: deps
	@mkdir -p var
	@if [ -z "$$RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN$$RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE" ] && [ ! -s var/alertmanager-token ]; then \
		$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > var/alertmanager-token; \
		chmod 600 var/alertmanager-token; fi
	@if [ -z "$$RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN$$RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE" ]; then \
		echo "Alertmanager bearer token: in var/alertmanager-token"; fi
	@if [ -z "$$RETRAIN_CONTROLLER_CALLBACK_SECRET$$RETRAIN_CONTROLLER_CALLBACK_SECRET_FILE" ] && [ ! -s var/callback-secret ]; then \
		$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > var/callback-secret; \
		chmod 600 var/callback-secret; fi
	RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE=$${RETRAIN_CONTROLLER_ALERTMANAGER_TOKEN_FILE:-var/alertmanager-token} \
	RETRAIN_CONTROLLER_CALLBACK_SECRET_FILE=$${RETRAIN_CONTROLLER_CALLBACK_SECRET_FILE:-var/callback-secret} \
		$(BIN)/retrain-controller serve --config $(CONFIG)

## demo: the whole loop on one machine (installs Prometheus and Alertmanager if missing); Ctrl-C stops it
demo: $(VENV)/.demo-deps
	@if [ -z "$$PROMETHEUS_BIN" ] || [ -z "$$ALERTMANAGER_BIN" ]; then sh tests/infra/install-system-deps.sh demo; fi
	$(BIN)/retrain-controller demo $(DEMO_ARGS)

## test: installs what the tests need (Debian packages, Python deps), checks layering, runs every test
test: test-deps
	$(BIN)/lint-imports
	REQUIRE_INTEGRATION=1 $(BIN)/pytest

lint: $(VENV)/.test-deps
	$(BIN)/lint-imports

## bench: figures for the README (by hand; not part of the test run)
$(VENV)/.bench-deps: $(VENV)/.deps
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-deps
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/trigger.py
	$(BIN)/python bench/judge.py
	$(BIN)/python bench/status.py

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
