//! One multiplexed reply inbox per bridge.
//!
//! The bridge subscribes once to `_INBOX.hsb.<bridge id>.*`; each durable call waits on
//! `_INBOX.hsb.<bridge id>.<token>`, where the token is derived from the message id. A transport
//! retry of the same instance therefore listens on the same address as the original, and a late
//! reply to the original still finds a waiter. A reply that finds no waiter at all goes to the
//! [`LateSink`], for the application.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::{Client, Message};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::late::{LateSink, Offered};
use crate::reply_token;
use crate::stats::Stats;

type Waiters = HashMap<String, Vec<(u64, Arc<Slot>)>>;

/// Replies kept per waiter at most; more are dropped (a waiter takes the first good one).
const SLOT_CAPACITY: usize = 8;

/// Where the dispatcher leaves replies for one waiter. Deliberately small: with 10,000 calls in
/// flight, a channel per call (which allocates a block of slots up front) cost ~6 KB each; an
/// empty queue allocates nothing.
#[derive(Default)]
pub(crate) struct Slot {
    /// Replies not taken yet.
    queue: Mutex<VecDeque<Message>>,
    /// Wakes the waiter when a reply arrives.
    arrived: Notify,
}

impl Slot {
    /// Leaves a reply; false (dropped) when the waiter already has `SLOT_CAPACITY` unread.
    fn put(&self, msg: Message) -> bool {
        let mut queue = self.queue.lock().expect("slot lock");
        if queue.len() >= SLOT_CAPACITY {
            return false;
        }
        queue.push_back(msg);
        drop(queue);
        self.arrived.notify_one();
        true
    }

    fn take(&self) -> Option<Message> {
        self.queue.lock().expect("slot lock").pop_front()
    }
}

/// The shared reply subscription and its routing table.
pub(crate) struct ReplyInbox {
    /// `_INBOX.hsb.<bridge id>`: unique per bridge so two bridges never share replies.
    prefix: String,
    /// Waiters by token; a token may have several waiters (concurrent retries of one instance).
    waiters: Arc<Mutex<Waiters>>,
    /// Distinguishes waiters of one token, so a dropped waiter removes only itself.
    next_id: AtomicU64,
    /// The dispatcher; aborted with the inbox.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplyInbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplyInbox {
    /// Subscribes the inbox and starts routing replies.
    pub(crate) async fn start(client: &Client, stats: Arc<Stats>, late: LateSink) -> Result<Self, String> {
        let prefix = format!("_INBOX.hsb.{}", uuid::Uuid::new_v4().simple());
        let mut sub = client.subscribe(format!("{prefix}.*")).await.map_err(|e| e.to_string())?;
        let waiters: Arc<Mutex<Waiters>> = Arc::default();
        let routes = waiters.clone();
        let cut = prefix.len() + 1;
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let token = msg.subject.get(cut..).unwrap_or_default();
                // A token's list is never empty: the last waiter's drop removes it, under this lock.
                let routed = match routes.lock().expect("inbox lock").get(token) {
                    Some(list) => {
                        for (_, slot) in list {
                            slot.put(msg.clone());
                        }
                        true
                    }
                    _ => false,
                };
                if routed {
                    stats.replies.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A reply nobody waits for (late, or for a call that gave up).
                    stats.orphan_replies.fetch_add(1, Ordering::Relaxed);
                    match late.offer(token, msg.headers.as_ref(), &msg.payload) {
                        Offered::Handed => {}
                        Offered::Dropped => {
                            stats.late_replies_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Offered::Rejected(_) => {
                            stats.rejected_replies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Ok(ReplyInbox { prefix, waiters, next_id: AtomicU64::new(0), task })
    }

    /// The reply subject for a message id.
    pub(crate) fn subject_for(&self, message_id: &str) -> String {
        format!("{}.{}", self.prefix, reply_token::token(message_id))
    }

    /// Starts waiting for replies to a message id; dropping the waiter stops it.
    pub(crate) fn register(&self, message_id: &str) -> Waiter {
        let token = reply_token::token(message_id);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        self.waiters.lock().expect("inbox lock").entry(token.clone()).or_default().push((id, slot.clone()));
        Waiter { token, id, slot, waiters: self.waiters.clone() }
    }

    /// How many calls wait for a reply now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.lock().expect("inbox lock").values().map(Vec::len).sum()
    }
}

/// A registration on the inbox.
pub(crate) struct Waiter {
    /// Routing key.
    token: String,
    /// This waiter among those of the token.
    id: u64,
    /// Replies routed here.
    slot: Arc<Slot>,
    /// To unregister on drop.
    waiters: Arc<Mutex<Waiters>>,
}

impl Waiter {
    /// The next reply routed to this waiter (waits as long as it takes; callers bound it).
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        loop {
            // Registered before looking, so a reply put in between still wakes us (a
            // `notify_one` with nobody waiting is kept for the next `notified`).
            let arrived = self.slot.arrived.notified();
            if let Some(msg) = self.slot.take() {
                return Some(msg);
            }
            arrived.await;
        }
    }

    /// A reply already routed here, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        self.slot.take()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.lock().expect("inbox lock");
        if let Some(list) = map.get_mut(&self.token) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.token);
            }
        }
    }
}
