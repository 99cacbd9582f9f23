//! A listener's metrics, labelled by its client and port (never by
//! anything a message carries).

use metrics::{counter, gauge};

#[derive(Debug, Clone)]
pub(super) struct Labels {
    client: String,
    port: String,
}

impl Labels {
    pub(super) fn new(client: &str, port: u16) -> Self {
        Self {
            client: client.to_owned(),
            port: port.to_string(),
        }
    }

    fn pairs(&self) -> [(&'static str, String); 2] {
        [("client", self.client.clone()), ("port", self.port.clone())]
    }

    pub(super) fn connection_opened(&self) {
        counter!("mllp_connections_total", &self.pairs()).increment(1);
        gauge!("mllp_connections_open", &self.pairs()).increment(1.0);
    }

    pub(super) fn connection_closed(&self) {
        gauge!("mllp_connections_open", &self.pairs()).decrement(1.0);
    }

    /// A connection turned away: `allowlist`, `limit` or `tls`.
    pub(super) fn connection_refused(&self, reason: &'static str) {
        let [client, port] = self.pairs();
        counter!(
            "mllp_connections_refused_total",
            &[client, port, ("reason", reason.to_owned())]
        )
        .increment(1);
    }

    /// A frame read: `message`, `oversized`, `interrupted` or `unterminated`.
    pub(super) fn frame(&self, kind: &'static str) {
        let [client, port] = self.pairs();
        counter!(
            "mllp_frames_total",
            &[client, port, ("kind", kind.to_owned())]
        )
        .increment(1);
        if kind == "message" {
            gauge!("mllp_last_message_timestamp_seconds", &self.pairs()).set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default(),
            );
        }
    }

    pub(super) fn discarded(&self, bytes: u64) {
        if bytes > 0 {
            counter!("mllp_discarded_bytes_total", &self.pairs()).increment(bytes);
        }
    }

    pub(super) fn ack(&self, code: &'static str) {
        let [client, port] = self.pairs();
        counter!(
            "mllp_acks_total",
            &[client, port, ("code", code.to_owned())]
        )
        .increment(1);
    }

    pub(super) fn stored(&self) {
        counter!("mllp_messages_stored_total", &self.pairs()).increment(1);
    }

    pub(super) fn resend(&self) {
        counter!("mllp_resends_total", &self.pairs()).increment(1);
    }

    pub(super) fn reused_control_id(&self) {
        counter!("mllp_reused_control_ids_total", &self.pairs()).increment(1);
    }

    pub(super) fn refused(&self) {
        counter!("mllp_messages_refused_total", &self.pairs()).increment(1);
    }

    /// The store did not confirm a write: no ACK, the connection closed.
    pub(super) fn store_unconfirmed(&self) {
        counter!("mllp_store_unconfirmed_total", &self.pairs()).increment(1);
    }
}
