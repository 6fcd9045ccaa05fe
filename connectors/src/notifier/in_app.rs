//! In-app delivery: a derived `system.notification` event published through
//! the fanout hub (`/ws/notifications`, channel `user:{recipient}`) and
//! stored for `GET /api/realtime/notifications`.

use super::error::DeliveryError;
use super::policy::Delivery;
use super::store::{InAppNotification, Store};
use crate::websocket_fanout::Hub;
use schemas::{Event, Payload};
use std::sync::Arc;

/// The in-app channel.
#[derive(Clone)]
pub struct InApp {
    /// Live push; none in tests that only read the store.
    pub hub: Option<Arc<Hub>>,
    pub store: Store,
    /// Stored notifications per user.
    pub keep: usize,
}

/// The `system.notification` event of a delivery (its id is the delivery's
/// idempotency key, so a re-publication is recognisable downstream).
pub fn event(d: &Delivery, now_ms: i64) -> Event {
    let rule = match d.items.as_slice() {
        [one] => one.rule.clone(),
        _ => None,
    };
    Event {
        id: d.id.clone().into(),
        ts: now_ms,
        user_id: Some(d.recipient.clone().into()),
        project_id: None,
        document_id: None,
        data: Payload::SystemNotification(Box::new(schemas::payload::Notification {
            notification_id: d.id.clone(),
            recipient_id: d.recipient.clone(),
            priority: d.priority,
            title: d.title(),
            body: d.text(),
            rule,
            suppressed_similar: d.suppressed_similar as i64,
        })),
    }
}

impl InApp {
    pub async fn send(&self, d: &Delivery, now_ms: i64) -> Result<(), DeliveryError> {
        let e = event(d, now_ms);
        let stored = InAppNotification {
            id: d.id.clone(),
            recipient_id: d.recipient.clone(),
            priority: d.priority,
            title: d.title(),
            body: d.text(),
            rule: match d.items.as_slice() {
                [one] => one.rule.clone(),
                _ => None,
            },
            suppressed_similar: d.suppressed_similar,
            kind: d.kind,
            created_ms: now_ms,
            read: false,
        };
        self.store
            .in_app_add(&stored, self.keep)
            .await
            .map_err(|e| DeliveryError::transient(format!("in-app store: {e}")))?;
        if let Some(hub) = &self.hub {
            hub.publish(&e);
        }
        Ok(())
    }
}
