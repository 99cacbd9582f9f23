"""Benchmarks of the whole system on loopback (`make bench`, which runs
`python -m bench` from scripts/ through scripts/bench.sh).

Layout:
  settings.py    every knob (BENCH_*, MONGO_CACHE_SIZE) as one dataclass,
                 read once from the environment
  stacks.py      Database and Stack: real processes started through
                 `loadgen stack` (the `stack` crate, shared with the tests)
  harness.py     what sections use: stacks, wrk and loadgen command lines,
                 measurements, the load log
  measure.py     a measurement on a quiet machine (load average, CPU used by
                 other processes); percentiles
  procstat.py    /proc figures: CPU time, RSS, peak RSS, liveness
  client.py      POST /events from Python; sink.py: a DELIVERY_URL sink
  sections/      one module per section: run(settings, harness) -> its entry
                 of results.json, render(result) -> its lines of the table
  report.py      the table, results.json/txt, bench.png and soak.png

Sections (BENCH_SECTIONS, comma-separated; default: all, in this order):
  ingest          wrk at several concurrencies, processor down and working
  end_to_end      P patients x E events at the real 5-6 s processing
  sleeping_lanes  processor CPU while 10,000 patients' events sleep
  side_by_side    5,000 patients x 1 event, 64 senders, on the compiled and
                  the Python server, alternating with the original NestJS
                  service (BENCH_ORIGINAL_DIR: a checkout of it), medians of 3
  fleet           1,000 x 5 at real timing with 1 and 3 processors; store
                  operations per processed event (from /metrics)
  takeover        SIGKILL one of three processors while events flow: time
                  until its patients' next events start (at a sink)
  accept_to_start idle fleet: 202 to processing start, single spaced events
  memory          RSS after 100,000 and 1,000,000 accepted events (nothing
                  scraping /metrics); ingest RSS under 1 MiB bodies
  k6              tests/load/k6-events.js with its defaults, fast and real
                  processing; its thresholds' verdicts
  burst           open loop 10,000 events/s for 30 s, per 5 s
  soak            open loop 1,000 events/s for 10 minutes, per minute, with
                  RSS of the database and both services, against targets
Each section starts its own database server on a fresh store. Before each
measurement it waits (up to BENCH_LOAD_WAIT_SECS) while the 1-minute load
average is above BENCH_MAX_LOAD, and records the load and the CPU other
processes used while it ran. Benchmarks print figures; they never assert.
"""
