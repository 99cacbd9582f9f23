// k6 load test for a running stack: POST /events at a ramping arrival rate.
//
//   BASE_URL   ingest address                 (default http://localhost:3000)
//   API_KEY    sent as Authorization: Bearer  (default: make run's development key)
//   PEAK_RATE  peak events per second          (default 200)
//   HOLD       how long each plateau lasts     (default 1m)
//   SMOKE=1    a 10-second run at a low rate, for the test command
//
// Traffic: mostly distinct patients, plus a few hot ones that receive many
// events, as a ward monitor would. Every request carries an Idempotency-Key.
// Thresholds: under 1% failed requests, p95 latency under 100 ms.

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:3000';
const API_KEY = __ENV.API_KEY || 'dev-ingest-key-change-me';
const SMOKE = __ENV.SMOKE === '1';
const PEAK_RATE = parseInt(__ENV.PEAK_RATE || '200', 10);
const HOLD = __ENV.HOLD || '1m';
const TARGET_PER_SECOND = Math.ceil(1000 / 60); // the original design's 1,000 events/min
const HOT_PATIENTS = 5;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const stages = SMOKE
  ? [
      { target: TARGET_PER_SECOND, duration: '3s' },
      { target: TARGET_PER_SECOND, duration: '7s' },
    ]
  : [
      { target: TARGET_PER_SECOND, duration: '30s' },
      { target: TARGET_PER_SECOND, duration: HOLD },
      { target: PEAK_RATE, duration: '30s' },
      { target: PEAK_RATE, duration: HOLD },
      { target: 0, duration: '10s' },
    ];

export const options = {
  scenarios: {
    events: {
      executor: 'ramping-arrival-rate',
      startRate: 1,
      timeUnit: '1s',
      preAllocatedVUs: SMOKE ? 10 : 50,
      maxVUs: SMOKE ? 50 : 500,
      stages,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<100'],
    checks: ['rate>0.99'],
  },
};

const TYPES = ['admission', 'lab_result', 'vitals', 'medication', 'discharge'];

// Patient ids are this run's own: a hot patient's backlog takes half an hour
// to drain, and a run that reused the last run's ids on the same store added
// to it until MAX_UNFINISHED_PER_CLIENT_PATIENT answered 429.
export function setup() {
  return { run: Date.now().toString(36) };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  // One event in ten goes to a hot patient, in turn (n % HOT_PATIENTS alone
  // would always be 0 here: every hot event went to one patient, whose
  // backlog passed MAX_UNFINISHED_PER_CLIENT_PATIENT and got 429s); the rest
  // spread over many.
  const patientId =
    n % 10 === 0 ? `hot-${data.run}-${(n / 10) % HOT_PATIENTS}` : `patient-${data.run}-${n % 5000}`;
  const body = JSON.stringify({
    patientId,
    type: TYPES[n % TYPES.length],
    data: { sequence: n, value: Math.round(Math.random() * 1000) / 10, unit: 'mmol/L' },
    ts: new Date().toISOString(),
  });
  const res = http.post(`${BASE_URL}/events`, body, {
    headers: {
      'Content-Type': 'application/json',
      Authorization: `Bearer ${API_KEY}`,
      'Idempotency-Key': `k6-${exec.vu.idInTest}-${n}-${Date.now()}`,
    },
    tags: { name: 'POST /events' },
  });
  check(res, {
    'status is 202': (r) => r.status === 202,
    'has an eventId': (r) => {
      try {
        return UUID.test(r.json('eventId'));
      } catch (_) {
        return false;
      }
    },
  });
}
