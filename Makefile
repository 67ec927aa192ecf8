.PHONY: setup up test lint fmt
setup:
	./scripts/setup
up:
	./scripts/up
test:
	./scripts/test
lint:
	./scripts/lint
fmt:
	.venv/bin/ruff format libs services cli tests
