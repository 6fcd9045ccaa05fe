//! Delivery reports counted per page: the mirror's producer context.
//!
//! Each record carries its page and its place in the page, packed in the
//! `usize` librdkafka hands back with the record's delivery report. The
//! report (on the producer's polling thread) counts the page down and keeps
//! a failure with its place; the mirror awaits the page once. Before, every
//! record had a future of its own (`FutureProducer`: a boxed oneshot sender,
//! a channel and a task wake-up per record), which took about a quarter of
//! the mirror's CPU (docs/BENCHMARKS.md "Delivery reports by page").

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The mirror's producer: librdkafka's, polled by a thread of its own,
/// with delivery reports counted per page.
pub type MirrorProducer = ThreadedProducer<Reports>;

// A record's opaque is `page << 32 | place`.
const _: () = assert!(usize::BITS == 64, "a record's opaque packs two u32");

/// The producer's context: the pages whose reports are awaited.
#[derive(Default)]
pub struct Reports {
    pages: Mutex<HashMap<u32, Arc<Page>>>,
    next: AtomicU32,
}

/// The records of one page and their reports.
pub struct Page {
    id: u32,
    /// Records not reported yet, plus one until the page is sealed.
    outstanding: AtomicUsize,
    /// The places of the records whose delivery failed, with the error.
    failures: Mutex<Vec<(u32, KafkaError)>>,
    done: Notify,
}

impl Reports {
    /// A new page, awaited until [`Reports::seal`] and every record's report.
    pub fn open(&self) -> Arc<Page> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let page = Arc::new(Page {
            id,
            outstanding: AtomicUsize::new(1),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
        });
        lock(&self.pages).insert(id, page.clone());
        page
    }

    /// Every record of `page` was handed to the producer (or refused): it is
    /// done once their reports are in.
    pub fn seal(&self, page: &Page) {
        self.count_down(page);
    }

    fn count_down(&self, page: &Page) {
        if page.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.pages).remove(&page.id);
            page.done.notify_one();
        }
    }
}

impl Page {
    /// The opaque of the record at `place`, counted as awaited: hand it to
    /// the producer with the record, or [`Page::refused`] if it refuses it.
    pub fn expect(&self, place: u32) -> usize {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        ((self.id as usize) << 32) | place as usize
    }

    /// The producer refused the record just expected: no report will come.
    /// (The page is not sealed yet, so this never completes it.)
    pub fn refused(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits until the page is sealed and every record reported; then the
    /// failed records' places and errors, by place.
    pub async fn wait(&self) -> Vec<(u32, KafkaError)> {
        while self.outstanding.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        let mut failures = std::mem::take(&mut *lock(&self.failures));
        failures.sort_unstable_by_key(|(place, _)| *place);
        failures
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (id, place) = ((opaque >> 32) as u32, opaque as u32);
        let Some(page) = lock(&self.pages).get(&id).cloned() else {
            // Only a record produced without a page (none is) or reported
            // twice (librdkafka reports once) could get here.
            tracing::error!(page = id, place, "mirror: a delivery report for no page");
            return;
        };
        if let Err((error, _)) = result {
            lock(&page.failures).push((place, error.clone()));
        }
        self.count_down(&page);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_is_done_when_sealed_and_every_record_reported() {
        let reports = Reports::default();
        let page = reports.open();
        let a = page.expect(0);
        let b = page.expect(1);
        let _refused = page.expect(2);
        page.refused();
        assert_eq!((a >> 32, b & 0xffff_ffff), (page.id as usize, 1));
        // One report in, then sealed: still waiting for the other.
        reports.count_down(&page);
        reports.seal(&page);
        assert_eq!(page.outstanding.load(Ordering::Relaxed), 1);
        lock(&page.failures).push((1, KafkaError::Canceled));
        reports.count_down(&page);
        let failures = tokio::time::timeout(std::time::Duration::from_secs(60), page.wait())
            .await
            .expect("the page completed after its last report");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 1);
        assert!(lock(&reports.pages).is_empty(), "a done page is forgotten");
    }

    #[tokio::test]
    async fn an_empty_page_is_done_when_sealed() {
        let reports = Reports::default();
        let page = reports.open();
        reports.seal(&page);
        assert!(page.wait().await.is_empty());
    }
}
