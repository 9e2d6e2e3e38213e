//! The queue behind the admin API's `QueueControl` (`smarthost queue
//! list|show|retry|delete|hold|release`, the status page): a thin adapter
//! from [`Queue`]'s methods to the API's types.

use super::{ControlError as QueueError, Listed, Queue};
use crate::admin::types::{
    BoxFut, ControlError, QueueControl, QueueEntry, QueueRecipient, QueueSummary,
};
use std::sync::Arc;

/// The queue as the admin API controls it.
pub struct QueueHandle(pub Arc<Queue>);

fn entry(l: Listed) -> QueueEntry {
    QueueEntry {
        id: l.id,
        age_secs: l.age_secs,
        sender: l.sender,
        attempts: l.attempts,
        next_attempt_secs: l.next_attempt_secs,
        held: l.held,
        recipients: l
            .recipients
            .into_iter()
            .map(|r| QueueRecipient {
                address: r.address,
                state: serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                last_error: r.last_error,
            })
            .collect(),
    }
}

fn not_found(e: QueueError) -> ControlError {
    ControlError::NotFound(e.to_string())
}

impl QueueControl for QueueHandle {
    fn list(&self) -> BoxFut<'_, Result<Vec<QueueEntry>, ControlError>> {
        Box::pin(async move { Ok(self.0.list().into_iter().map(entry).collect()) })
    }

    fn show<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<QueueEntry, ControlError>> {
        Box::pin(async move { self.0.show(id).map(entry).map_err(not_found) })
    }

    fn retry<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.0.retry(id).map_err(not_found) })
    }

    fn retry_all(&self) -> BoxFut<'_, Result<u64, ControlError>> {
        Box::pin(async move { Ok(self.0.retry_all() as u64) })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.0.delete(id).map_err(not_found) })
    }

    fn hold<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.0.hold(id).map_err(not_found) })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.0.release(id).map_err(not_found) })
    }

    fn summary(&self) -> BoxFut<'_, Result<QueueSummary, ControlError>> {
        Box::pin(async move {
            let depth = self.0.depth() as u64;
            Ok(QueueSummary {
                depth,
                oldest_age_secs: (depth > 0).then(|| self.0.oldest_age_secs()),
                enabled: true,
            })
        })
    }
}
