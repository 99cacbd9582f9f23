.PHONY: run test load bench check-packaging

## Run the whole system locally (SecantusDB + processor + ingest); Ctrl-C stops all.
run:
	scripts/run.sh

## Every check and test (installs SecantusDB and the packaging tools if missing).
test:
	scripts/test.sh

## The k6 load test against a running stack (start `make run` first).
load:
	scripts/load.sh

check-packaging:
	scripts/check-packaging.sh

## Benchmarks (not tests): prints a table, writes target/bench/results.json and bench.png.
bench:
	scripts/bench.sh
