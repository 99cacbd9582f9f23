-- wrk script: POST valid, distinct events to ingest; done() prints one JSON
-- line (prefixed "WRK_JSON ") with throughput, latency percentiles and errors.
--   wrk -t2 -c64 -d20s -s tests/load/wrk-events.lua http://127.0.0.1:3000
-- Patients: 10,000 distinct ids, so some see several events per run.
-- API key: environment variable API_KEY (sent as Authorization: Bearer).
-- WRK_RUN (optional, a number): goes into every body, so that several runs
-- against one database send distinct events (ingest answers a repeated body
-- within DEDUP_WINDOW_S as a duplicate of the stored event).

local counter = 0
local api_key = os.getenv("API_KEY") or "dev-ingest-key-change-me"
local run = tonumber(os.getenv("WRK_RUN") or "0") or 0
-- A global, not a local: thread:set() in setup() sets this thread's global,
-- which a local of the same name would hide (every thread then numbered its
-- events alike, and half of what two threads sent were duplicates).
thread_id = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + thread_id)
end

function request()
  counter = counter + 1
  local n = thread_id * 100000000 + counter
  local body = string.format(
    '{"patientId":"wrk-%d","type":"vitals","data":{"hr":%d,"seq":%d,"run":%d},"ts":"2025-10-01T12:00:00Z"}',
    n % 10000, 60 + (n % 40), n, run)
  return wrk.format("POST", "/events",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. api_key }, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.2f,"p95_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
