# pgop: the two commands of the README, and their parts.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: up down test install build unit e2e bench mutants

## up: start the local environment and a PostgreSQL cluster (state in .local/)
up: install build
	bash e2e/env/local-env.sh up

## down: stop everything `make up` started and remove its state (.local/)
down:
	bash e2e/env/local-env.sh down

## test: every unit, integration and end-to-end test
test: install build
	cargo test --workspace --all-targets

install:
	bash e2e/env/install.sh

build:
	cargo build --workspace --bins

unit:
	cargo test --workspace --lib --bins

e2e: install build
	cargo test -p pgop-e2e --test e2e

## bench: the scale benchmark at 1,000 clusters on the release build (results in target/bench)
bench: install
	cargo build --release --bins
	PGOP_BIN_DIR=$(CURDIR)/target/release target/release/pgop-bench --clusters 1000 --namespaces 20

## mutants: 1,000 broken manifests against pgop, figures in target/mutants
mutants: install build
	target/debug/pgop-mutants --count 1000
