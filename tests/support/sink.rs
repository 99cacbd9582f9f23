//! A downstream system for `DELIVERY_URL`: records every delivery (when it
//! started and ended, for which patient, event and sequence number), holds
//! each request a while as a real system would, and can refuse chosen
//! events. It also counts, per patient, how many deliveries were open at
//! once: the fleet must never let that exceed one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub patient: String,
    pub seq: i64,
    pub idempotency_key: String,
    pub started: Instant,
    pub ended: Instant,
}

type Refuse = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct Books {
    deliveries: Vec<Delivery>,
    open: HashMap<String, usize>,
    /// Most deliveries open at once for one patient.
    max_open_per_patient: usize,
}

#[derive(Clone)]
struct SinkState {
    books: Arc<Mutex<Books>>,
    hold: Duration,
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
        let state = SinkState {
            books: Arc::default(),
            hold,
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

    /// Completed deliveries, in the order they started.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let mut deliveries = self.state.books.lock().unwrap().deliveries.clone();
        deliveries.sort_by_key(|d| d.started);
        deliveries
    }

    /// The sequence numbers delivered for `patient`, in delivery order.
    pub fn seqs_of(&self, patient: &str) -> Vec<i64> {
        self.deliveries()
            .iter()
            .filter(|d| d.patient == patient)
            .map(|d| d.seq)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state.books.lock().unwrap().deliveries.len()
    }

    /// Most deliveries that were ever open at once for one patient.
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
                    "patient {patient}: seq {} delivered after seq {}",
                    pair[1].seq,
                    pair[0].seq
                );
                assert!(
                    pair[1].started >= pair[0].ended,
                    "patient {patient}: deliveries overlapped"
                );
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
                "event {id} was delivered twice although no crash or pause touched it"
            );
        }
        repeated
    }
}

async fn receive(
    State(state): State<SinkState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    // The downstream's work goes on even if the caller hangs up (a killed or
    // paused processor): it runs in its own task, and only the answer is lost.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let work = tokio::spawn(deliver(state, key, body));
    work.await.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn deliver(state: SinkState, idempotency_key: String, body: Value) -> StatusCode {
    let started = Instant::now();
    let patient = body["patientId"].as_str().unwrap_or_default().to_owned();
    {
        let mut books = state.books.lock().unwrap();
        let open = books.open.entry(patient.clone()).or_default();
        *open += 1;
        let open = *open;
        books.max_open_per_patient = books.max_open_per_patient.max(open);
    }
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
    if refused {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    books.deliveries.push(Delivery {
        event_id: body["eventId"].as_str().unwrap_or_default().to_owned(),
        patient,
        seq: body["seq"].as_i64().unwrap_or(-1),
        idempotency_key,
        started,
        ended: Instant::now(),
    });
    StatusCode::OK
}
