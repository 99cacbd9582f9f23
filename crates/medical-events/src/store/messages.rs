//! HL7 messages by the sender's id of them (MSH-10 with MSH-3 and MSH-4):
//! the reused-id check at intake and the operator's search.

use super::documents::QueuedEvent;
use super::error::StoreError;
use super::{Store, shapes};

/// Which messages to find: a control id, narrowed to a client and sender.
#[derive(Debug, Clone, Default)]
pub struct ControlIdQuery<'a> {
    pub control_id: &'a str,
    pub client: Option<&'a str>,
    pub sending_application: Option<&'a str>,
    pub sending_facility: Option<&'a str>,
}

impl Store {
    /// Stored messages with this control id (and client and sender, when
    /// given), oldest first, without their data. At most
    /// [`shapes::CONTROL_ID_MATCHES`] of them.
    pub async fn by_control_id(
        &self,
        query: &ControlIdQuery<'_>,
    ) -> Result<Vec<QueuedEvent>, StoreError> {
        let mut found = self
            .find_all(
                &self.queued,
                shapes::by_control_id(query),
                "reading messages by control id",
            )
            .await?;
        if let Some(client) = query.client {
            found.retain(|event| event.client == client);
        }
        found.sort_by(|a, b| a.accepted_at.cmp(&b.accepted_at).then(a.id.cmp(&b.id)));
        Ok(found)
    }
}
