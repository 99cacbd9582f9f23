//! A downstream system for `DELIVERY_URL`: records every delivery (when it
//! started and ended, for which patient, event, sequence number and fencing
//! token, and whether the caller hung up before the answer), holds each
//! request a while as a real system would, and can refuse chosen events.
//!
//! An enforcing sink ([`Sink::enforcing`]) does what the README asks of a
//! downstream that protects itself: it keeps the highest `Fencing-Token` seen
//! per patient and answers `409` to a lower one, when the request arrives and
//! again when its work is done (a newer owner may have spoken meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// What the sink made of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still being worked on.
    Open,
    /// Done, answered 2xx.
    Accepted,
    /// Its fencing token was below one already seen for the patient: 409.
    Stale,
    /// Refused by the test's choice ([`Sink::refuse`]): 503.
    Refused,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub patient: String,
    pub seq: i64,
    pub idempotency_key: String,
    /// `Fencing-Token`, if the request carried one.
    pub token: Option<u64>,
    pub started: Instant,
    pub ended: Option<Instant>,
    pub verdict: Verdict,
    /// The caller closed the connection before the answer (its processor
    /// was stopped, or it cut the request): its answer was lost.
    pub caller_hung_up: bool,
}

type Refuse = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct Books {
    deliveries: Vec<Delivery>,
    open: HashMap<String, usize>,
    /// Most deliveries open at once for one patient (whatever their verdict).
    max_open_per_patient: usize,
    highest_token: HashMap<String, u64>,
}

#[derive(Clone)]
struct SinkState {
    books: Arc<Mutex<Books>>,
    hold: Duration,
    enforce_tokens: bool,
    refuse: Arc<Mutex<Option<Refuse>>>,
}

pub struct Sink {
    pub url: String,
    state: SinkState,
    _server: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// A sink on a random port that holds each delivery for `hold`.
    pub async fn start(hold: Duration) -> Self {
        Self::serve(hold, false).await
    }

    /// Like [`Sink::start`], and it refuses stale fencing tokens.
    pub async fn enforcing(hold: Duration) -> Self {
        Self::serve(hold, true).await
    }

    async fn serve(hold: Duration, enforce_tokens: bool) -> Self {
        let state = SinkState {
            books: Arc::default(),
            hold,
            enforce_tokens,
            refuse: Arc::default(),
        };
        let router = axum::Router::new()
            .route("/deliveries", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/deliveries",
            listener.local_addr().unwrap().port()
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            state,
            _server: server,
        }
    }

    /// From now on, answers 503 to the deliveries `refuse` picks.
    pub fn refuse(&self, refuse: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        *self.state.refuse.lock().unwrap() = Some(Arc::new(refuse));
    }

    /// Accepts everything again.
    pub fn accept_all(&self) {
        *self.state.refuse.lock().unwrap() = None;
    }

    /// Every delivery so far, whatever became of it, in the order they started.
    pub fn all(&self) -> Vec<Delivery> {
        let mut deliveries = self.state.books.lock().unwrap().deliveries.clone();
        deliveries.sort_by_key(|d| d.started);
        deliveries
    }

    /// Accepted deliveries, in the order they started.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.all()
            .into_iter()
            .filter(|d| d.verdict == Verdict::Accepted)
            .collect()
    }

    /// Deliveries refused because their token was stale.
    pub fn stale(&self) -> Vec<Delivery> {
        self.all()
            .into_iter()
            .filter(|d| d.verdict == Verdict::Stale)
            .collect()
    }

    /// The sequence numbers accepted for `patient`, in delivery order.
    pub fn seqs_of(&self, patient: &str) -> Vec<i64> {
        self.deliveries()
            .iter()
            .filter(|d| d.patient == patient)
            .map(|d| d.seq)
            .collect()
    }

    /// How many deliveries were accepted.
    pub fn count(&self) -> usize {
        self.deliveries().len()
    }

    /// Deliveries under way now.
    pub fn open_now(&self) -> Vec<Delivery> {
        self.all()
            .into_iter()
            .filter(|d| d.verdict == Verdict::Open)
            .collect()
    }

    /// Most deliveries that were ever open at once for one patient (any verdict).
    pub fn max_open_per_patient(&self) -> usize {
        self.state.books.lock().unwrap().max_open_per_patient
    }

    /// Checks what the fleet promises downstream: one delivery at a time per
    /// patient, each patient's events in sequence order (a redelivery may
    /// repeat the event just delivered), and a second delivery only for the
    /// events in `may_repeat`. Returns the events delivered more than once.
    pub fn assert_ordered_one_at_a_time(&self, may_repeat: &[String]) -> Vec<String> {
        assert_eq!(
            self.max_open_per_patient(),
            1,
            "two deliveries of one patient were open at the same time"
        );
        self.assert_accepted_in_order(may_repeat)
    }

    /// What an enforcing downstream guarantees whatever the faults: the
    /// deliveries it accepted never overlapped for one patient and came in
    /// sequence order; an event accepted twice only if it is in `may_repeat`.
    /// Returns the events accepted more than once.
    pub fn assert_accepted_in_order(&self, may_repeat: &[String]) -> Vec<String> {
        let mut by_patient: HashMap<String, Vec<Delivery>> = HashMap::new();
        let mut times: HashMap<String, usize> = HashMap::new();
        for delivery in self.deliveries() {
            *times.entry(delivery.event_id.clone()).or_default() += 1;
            by_patient
                .entry(delivery.patient.clone())
                .or_default()
                .push(delivery);
        }
        for (patient, deliveries) in &by_patient {
            for pair in deliveries.windows(2) {
                assert!(
                    pair[1].seq >= pair[0].seq,
                    "patient {patient}: seq {} accepted after seq {}",
                    pair[1].seq,
                    pair[0].seq
                );
                assert!(
                    Some(pair[1].started) >= pair[0].ended,
                    "patient {patient}: accepted deliveries overlapped"
                );
                if let (Some(first), Some(second)) = (pair[0].token, pair[1].token) {
                    assert!(
                        second >= first,
                        "patient {patient}: token {second} accepted after {first}"
                    );
                }
            }
        }
        let repeated: Vec<String> = times
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        for id in &repeated {
            assert!(
                may_repeat.contains(id),
                "event {id} was delivered twice although no crash, pause or cut touched it"
            );
        }
        repeated
    }
}

/// Marks the delivery's caller as gone if the request is dropped before it
/// was answered (hyper drops the handler when the connection closes).
struct HangUp {
    books: Arc<Mutex<Books>>,
    index: usize,
    answered: bool,
}

impl Drop for HangUp {
    fn drop(&mut self) {
        if !self.answered {
            self.books.lock().unwrap().deliveries[self.index].caller_hung_up = true;
        }
    }
}

async fn receive(
    State(state): State<SinkState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let patient = body["patientId"].as_str().unwrap_or_default().to_owned();
    let token = header("fencing-token").and_then(|t| t.parse::<u64>().ok());
    let index = {
        let mut books = state.books.lock().unwrap();
        let stale = state.enforce_tokens
            && books
                .highest_token
                .get(&patient)
                .is_some_and(|highest| token.unwrap_or(0) < *highest);
        if !stale && let Some(token) = token {
            let highest = books.highest_token.entry(patient.clone()).or_default();
            *highest = (*highest).max(token);
        }
        books.deliveries.push(Delivery {
            event_id: body["eventId"].as_str().unwrap_or_default().to_owned(),
            patient: patient.clone(),
            seq: body["seq"].as_i64().unwrap_or(-1),
            idempotency_key: header("idempotency-key").unwrap_or_default(),
            token,
            started: Instant::now(),
            ended: stale.then(Instant::now),
            verdict: if stale { Verdict::Stale } else { Verdict::Open },
            caller_hung_up: false,
        });
        let index = books.deliveries.len() - 1;
        if stale {
            return StatusCode::CONFLICT;
        }
        let open = books.open.entry(patient.clone()).or_default();
        *open += 1;
        let open = *open;
        books.max_open_per_patient = books.max_open_per_patient.max(open);
        index
    };
    let mut hang_up = HangUp {
        books: Arc::clone(&state.books),
        index,
        answered: false,
    };
    // The downstream's work goes on even if the caller hangs up (a killed or
    // paused processor): it runs in its own task, and only the answer is lost.
    let work = tokio::spawn(deliver(state, index, patient, token, body));
    let status = work.await.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    hang_up.answered = true;
    status
}

async fn deliver(
    state: SinkState,
    index: usize,
    patient: String,
    token: Option<u64>,
    body: Value,
) -> StatusCode {
    tokio::time::sleep(state.hold).await;
    let refused = state
        .refuse
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|refuse| refuse(&body));
    let mut books = state.books.lock().unwrap();
    if let Some(open) = books.open.get_mut(&patient) {
        *open -= 1;
    }
    // A newer owner spoke while this one was being worked on: its effect is refused.
    let stale = state.enforce_tokens
        && books
            .highest_token
            .get(&patient)
            .is_some_and(|highest| token.unwrap_or(0) < *highest);
    let (verdict, status) = if stale {
        (Verdict::Stale, StatusCode::CONFLICT)
    } else if refused {
        (Verdict::Refused, StatusCode::SERVICE_UNAVAILABLE)
    } else {
        (Verdict::Accepted, StatusCode::OK)
    };
    let delivery = &mut books.deliveries[index];
    delivery.verdict = verdict;
    delivery.ended = Some(Instant::now());
    status
}
