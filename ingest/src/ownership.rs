//! Ownership of batches and block tasks across ingest instances: membership, rendezvous
//! hashing and leases in the leases bucket.
//!
//! Consumes the keys this instance would run ([`Ownership::update`]: the wanted keys, and the
//! active keys whose work is still running here) and the contents of the leases bucket.
//! Produces the answer to [`Ownership::should_run`] and a change notification
//! ([`Ownership::subscribe`]) whenever an answer may have changed.
//!
//! How it works, once per [`TICK`] in one task per instance ([`OwnershipTask`]):
//! - The instance writes `member.<consumer_id>` every [`RENEW_INTERVAL`]. The bucket's
//!   `max_age` ([`LEASE_TTL`]) removes the key of an instance that stopped renewing.
//! - It lists the live members and picks the owner of each wanted key by rendezvous hashing
//!   of the key over them, so a new member takes about `1/n` of the keys and a member that
//!   leaves hands only its own keys to the others.
//! - A wanted key whose owner is this instance is leased with `create` on `batch.<id>` or
//!   `task.<id>`; a held lease is renewed with `update` on its revision every
//!   [`RENEW_INTERVAL`]. Only one instance can hold a lease, so a key is never started on two
//!   instances even while they disagree about the members.
//! - A held lease whose key is now owned by another member is handed over: `should_run`
//!   turns false ([`Ownership::handing_over`] true), the caller reports the work inactive,
//!   and only then is the lease deleted. The supervisor keeps a batch's runner until the new
//!   owner runs the batch, so a handed-over batch runs on both instances for a few seconds.
//! - [`Ownership::leave`], at shutdown, drops this instance from the members and deletes its
//!   member key, so every held lease is handed over that way.
//!
//! Guarantees: `should_run` is true only while the lease is held and its last successful
//! renewal was sent less than `LEASE_TTL - LEASE_MARGIN` ago. Since the server expires the
//! key `LEASE_TTL` after that write, an instance that cannot renew (NATS unreachable, process
//! frozen) stops its work before any other instance can take the lease. A renewal that finds
//! another instance's lease stops the work at once. Only work being handed over, whose lease
//! this instance released itself, runs on without a lease, until the new owner runs it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use monitor_core::settings::NatsSettings;
use monitor_core::topology;
pub use monitor_core::topology::LEASE_TTL;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Time between two renewals of the member key and of each held lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(LEASE_TTL.as_secs() / 3);
/// Time between two rounds of listing members and acquiring, renewing or releasing leases.
pub const TICK: Duration = Duration::from_secs(1);
/// A lease counts as held until `LEASE_TTL - LEASE_MARGIN` after its last renewal was sent,
/// which leaves the caller this long to stop its work before the server expires the lease.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// Maximum time one bucket operation may take before the round moves on.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease operations of one round in flight at once.
const CONCURRENT_STEPS: usize = 32;

/// Key prefix of the member entries in the leases bucket.
const MEMBER_PREFIX: &str = "member.";

/// What a lease is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseKind {
    /// A batch of a token task (`batch.<batch_id>`).
    Batch,
    /// A block task (`task.<task_id>`).
    Task,
}

/// The key of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub kind: LeaseKind,
    pub id: u64,
}

impl LeaseKey {
    pub fn batch(batch_id: u64) -> Self {
        LeaseKey {
            kind: LeaseKind::Batch,
            id: batch_id,
        }
    }

    pub fn task(task_id: u64) -> Self {
        LeaseKey {
            kind: LeaseKind::Task,
            id: task_id,
        }
    }

    /// Parses a key of the leases bucket (`batch.<id>` or `task.<id>`).
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix("batch.") {
            return id.parse().ok().map(LeaseKey::batch);
        }
        key.strip_prefix("task.")?.parse().ok().map(LeaseKey::task)
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LeaseKind::Batch => write!(f, "batch.{}", self.id),
            LeaseKind::Task => write!(f, "task.{}", self.id),
        }
    }
}

/// Returns the member that owns `key` by rendezvous (highest random weight) hashing: the one
/// with the highest score of `(member, key)`. `None` when there is no member.
pub fn rendezvous_owner<'a>(
    key: &str,
    members: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|member| (score(member, key), *member))
}

/// A hash of `(member, key)` that is the same on every build and platform: FNV-1a 64 over
/// both strings, then the SplitMix64 finalizer to spread similar inputs apart.
fn score(member: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member.bytes().chain([0u8]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A lease this instance holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// When the write that produced `revision` was sent.
    renewed_at: Instant,
}

impl Held {
    fn is_valid(&self, now: Instant) -> bool {
        now < self.renewed_at + (LEASE_TTL - LEASE_MARGIN)
    }
}

#[derive(Debug, Default)]
struct State {
    wanted: HashSet<LeaseKey>,
    active: HashSet<LeaseKey>,
    held: HashMap<LeaseKey, Held>,
    /// Live members, this instance included, sorted.
    members: Vec<String>,
    /// Lease keys present in the bucket at the last listing, whoever holds them.
    present: HashSet<LeaseKey>,
    /// Whether this instance left the members through [`Ownership::leave`].
    leaving: bool,
}

impl State {
    fn owner(&self, key: LeaseKey) -> Option<&str> {
        let key = key.to_string();
        rendezvous_owner(&key, self.members.iter().map(String::as_str))
    }

    fn holds_valid(&self, key: LeaseKey, now: Instant) -> bool {
        self.held.get(&key).is_some_and(|held| held.is_valid(now))
    }

    /// Returns whether `key` is wanted here but rendezvous hashing now gives it to another
    /// member.
    fn owned_elsewhere(&self, key: LeaseKey, me: &str) -> bool {
        self.wanted.contains(&key) && self.owner(key) != Some(me)
    }

    fn should_run(&self, key: LeaseKey, me: &str, now: Instant) -> bool {
        self.holds_valid(key, now) && !self.owned_elsewhere(key, me)
    }
}

struct Inner {
    consumer_id: String,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    wake: Notify,
}

/// Handle to the ownership of this instance; cheap to clone and shared by the supervisor and
/// the block-task runners.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

impl Ownership {
    /// Creates the handle; nothing is held until [`OwnershipTask::run`] runs.
    pub fn new(consumer_id: String) -> Self {
        let (changed, _) = watch::channel(0);
        let state = State {
            members: vec![consumer_id.clone()],
            ..State::default()
        };
        Ownership {
            inner: Arc::new(Inner {
                consumer_id,
                state: Mutex::new(state),
                changed,
                wake: Notify::new(),
            }),
        }
    }

    pub fn consumer_id(&self) -> &str {
        &self.inner.consumer_id
    }

    /// Replaces the keys of one kind that this instance would run (`wanted`) and those whose
    /// work still runs here (`active`, including work that is stopping). A held lease is kept
    /// while its key is active, and released once it is neither active nor wanted here.
    pub fn update(
        &self,
        kind: LeaseKind,
        wanted: impl IntoIterator<Item = u64>,
        active: impl IntoIterator<Item = u64>,
    ) {
        let key = |id| LeaseKey { kind, id };
        let wanted: HashSet<LeaseKey> = wanted.into_iter().map(key).collect();
        let active: HashSet<LeaseKey> = active.into_iter().map(key).collect();
        let mut state = self.lock();
        let changed = replace_kind(&mut state.wanted, kind, wanted)
            | replace_kind(&mut state.active, kind, active);
        drop(state);
        if changed {
            self.inner.wake.notify_one();
        }
    }

    /// Returns whether this instance holds the lease of `key` and may run its work now.
    /// False as soon as the lease is lost, about to expire, or being handed to another member.
    pub fn should_run(&self, key: LeaseKey) -> bool {
        self.lock()
            .should_run(key, &self.inner.consumer_id, Instant::now())
    }

    /// Returns whether this instance still holds a valid lease of `key` that it is handing
    /// to the member rendezvous hashing now picks.
    pub fn handing_over(&self, key: LeaseKey) -> bool {
        let state = self.lock();
        state.holds_valid(key, Instant::now())
            && state.owned_elsewhere(key, &self.inner.consumer_id)
    }

    /// Returns the member that rendezvous hashing picks for `key` among the live members.
    pub fn owner_of(&self, key: LeaseKey) -> Option<String> {
        self.lock().owner(key).map(str::to_owned)
    }

    /// Returns whether another instance held the lease of `key` at the last listing.
    pub fn held_elsewhere(&self, key: LeaseKey) -> bool {
        let state = self.lock();
        state.present.contains(&key) && !state.held.contains_key(&key)
    }

    /// Live members at the last listing, this instance included, sorted.
    pub fn members(&self) -> Vec<String> {
        self.lock().members.clone()
    }

    /// Returns the number of leases this instance holds, valid or about to expire.
    pub fn held_count(&self) -> usize {
        self.lock().held.len()
    }

    /// Stops counting this instance as a member, so that rendezvous hashing gives every key to
    /// the others and the held leases are handed over as the work stops being active. The
    /// member key is deleted in the next round. Returns false, and changes nothing, when no
    /// other member is known.
    pub fn leave(&self) -> bool {
        let me = self.inner.consumer_id.as_str();
        let mut state = self.lock();
        if !state.members.iter().any(|member| member != me) {
            return false;
        }
        state.leaving = true;
        state.members.retain(|member| member != me);
        drop(state);
        info!("leaving the members, the batches move to the other instances before this one stops");
        self.notify_changed();
        self.inner.wake.notify_one();
        true
    }

    /// Returns a receiver that sees a new value whenever `should_run` may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind, still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify_changed(&self) {
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }
}

fn replace_kind(set: &mut HashSet<LeaseKey>, kind: LeaseKind, next: HashSet<LeaseKey>) -> bool {
    let before = set.len();
    let mut changed = false;
    set.retain(|key| key.kind != kind || next.contains(key));
    changed |= set.len() != before;
    for key in next {
        changed |= set.insert(key);
    }
    changed
}

/// What one round decided for a key.
#[derive(Debug, Clone, Copy)]
enum Step {
    Acquire,
    Renew(Held),
    Release(Held),
}

/// The task that keeps the member key and the leases of one instance.
pub struct OwnershipTask {
    ownership: Ownership,
    leases: kv::Store,
    js: jetstream::Context,
    nats: NatsSettings,
    member_renewed_at: Option<Instant>,
    warned_listing: bool,
}

impl OwnershipTask {
    pub fn new(
        ownership: Ownership,
        leases: kv::Store,
        js: jetstream::Context,
        nats: NatsSettings,
    ) -> Self {
        OwnershipTask {
            ownership,
            leases,
            js,
            nats,
            member_renewed_at: None,
            warned_listing: false,
        }
    }

    /// Runs rounds until `stop` is cancelled, then releases every lease and the member key.
    /// Cancel `stop` only after the work under the leases has stopped.
    pub async fn run(mut self, stop: CancellationToken) {
        info!(
            consumer_id = %self.ownership.consumer_id(),
            bucket = %self.leases.name,
            lease_ttl_ms = LEASE_TTL.as_millis() as u64,
            "ownership started"
        );
        loop {
            self.round().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = sleep(TICK) => {}
                () = self.ownership.inner.wake.notified() => {}
            }
        }
        self.release_all().await;
    }

    async fn round(&mut self) {
        let mut missing_bucket = !self.renew_member().await;
        missing_bucket |= !self.list().await;
        self.expire_local();
        // Concurrently: one round trip at a time would let a busy connection delay the last
        // renewal of a round past the lease's life.
        let steps = self.plan();
        let outcomes: Vec<bool> = stream::iter(steps)
            .map(|(key, step)| self.apply(key, step))
            .buffer_unordered(CONCURRENT_STEPS)
            .collect()
            .await;
        missing_bucket |= outcomes.contains(&false);
        if missing_bucket {
            self.recreate_bucket().await;
        }
        self.ownership.notify_changed();
    }

    /// Writes the member key when due, or deletes it once this instance is leaving; false
    /// when the bucket seems to be gone.
    async fn renew_member(&mut self) -> bool {
        if self.ownership.lock().leaving {
            return self.delete_member().await;
        }
        let now = Instant::now();
        if self
            .member_renewed_at
            .is_some_and(|at| now.duration_since(at) < RENEW_INTERVAL)
        {
            return true;
        }
        let key = member_key(self.ownership.consumer_id());
        let value = Bytes::from(self.ownership.consumer_id().to_owned());
        match timeout(OPERATION_TIMEOUT, self.leases.put(&key, value)).await {
            Ok(Ok(_)) => {
                if self.member_renewed_at.is_none() {
                    info!(key = %key, "registered as a member");
                }
                self.member_renewed_at = Some(now);
                true
            }
            Ok(Err(error)) => {
                warn!(key = %key, error = %error, "failed to renew the member key, retrying");
                !is_missing_stream(&error.to_string())
            }
            Err(_) => {
                warn!(key = %key, timeout_ms = OPERATION_TIMEOUT.as_millis() as u64, "member key renewal timed out, retrying");
                true
            }
        }
    }

    /// Deletes the member key once; false when the bucket seems to be gone.
    async fn delete_member(&mut self) -> bool {
        if self.member_renewed_at.is_none() {
            return true;
        }
        let key = member_key(self.ownership.consumer_id());
        match timeout(OPERATION_TIMEOUT, self.leases.delete(&key)).await {
            Ok(Ok(())) => {
                info!(key = %key, "left the members");
                self.member_renewed_at = None;
                true
            }
            Ok(Err(error)) => {
                warn!(key = %key, error = %error, "failed to delete the member key, retrying");
                !is_missing_stream(&error.to_string())
            }
            Err(_) => {
                warn!(key = %key, timeout_ms = OPERATION_TIMEOUT.as_millis() as u64, "member key deletion timed out, retrying");
                true
            }
        }
    }

    /// Lists the members and the present leases; false when the bucket seems to be gone.
    async fn list(&mut self) -> bool {
        let listed = timeout(OPERATION_TIMEOUT, async {
            self.leases
                .keys()
                .await
                .map_err(|e| e.to_string())?
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {OPERATION_TIMEOUT:?}")));
        let keys = match listed {
            Ok(keys) => keys,
            Err(error) => {
                if !self.warned_listing {
                    warn!(error = %error, "failed to list the leases bucket, keeping the last members");
                    self.warned_listing = true;
                }
                return !is_missing_stream(&error);
            }
        };
        self.warned_listing = false;

        let me = self.ownership.consumer_id().to_owned();
        let mut members: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(MEMBER_PREFIX))
            .map(str::to_owned)
            .collect();
        let mut state = self.ownership.lock();
        if state.leaving {
            members.remove(&me);
        } else {
            members.insert(me);
        }
        let members: Vec<String> = members.into_iter().collect();
        let present = keys.iter().filter_map(|k| LeaseKey::parse(k)).collect();

        if state.members != members {
            info!(members = ?members, "members changed");
            state.members = members;
        }
        state.present = present;
        true
    }

    /// Drops leases whose last renewal is too old to trust.
    fn expire_local(&mut self) {
        let now = Instant::now();
        let mut state = self.ownership.lock();
        state.held.retain(|key, held| {
            let valid = held.is_valid(now);
            if !valid {
                warn!(key = %key, since_renewal_ms = now.duration_since(held.renewed_at).as_millis() as u64, "lease not renewed in time, its work stops");
            }
            valid
        });
    }

    /// Decides what to do with every key wanted, active or held.
    fn plan(&self) -> Vec<(LeaseKey, Step)> {
        let me = self.ownership.consumer_id();
        let state = self.ownership.lock();
        let now = Instant::now();
        let keys: BTreeSet<LeaseKey> = state
            .wanted
            .iter()
            .chain(&state.active)
            .chain(state.held.keys())
            .copied()
            .collect();
        let mut steps = Vec::new();
        for key in keys {
            let wanted = state.wanted.contains(&key);
            let active = state.active.contains(&key);
            let is_owner = state.owner(key) == Some(me);
            match state.held.get(&key) {
                Some(held) if !active && (!wanted || !is_owner) => {
                    steps.push((key, Step::Release(*held)));
                }
                Some(held) if now.duration_since(held.renewed_at) >= RENEW_INTERVAL => {
                    steps.push((key, Step::Renew(*held)));
                }
                Some(_) => {}
                None if wanted && is_owner && !active => steps.push((key, Step::Acquire)),
                None => {}
            }
        }
        steps
    }

    /// Carries out one step; false when the bucket seems to be gone.
    async fn apply(&self, key: LeaseKey, step: Step) -> bool {
        let outcome = match step {
            Step::Acquire => self.acquire(key).await,
            Step::Renew(held) => self.renew(key, held).await,
            Step::Release(held) => self.release(key, held).await,
        };
        match outcome {
            Ok(()) => true,
            Err(error) => {
                warn!(key = %key, step = ?step, error = %error, "lease operation failed, retrying next round");
                !is_missing_stream(&error)
            }
        }
    }

    async fn acquire(&self, key: LeaseKey) -> Result<(), String> {
        let sent_at = Instant::now();
        let created = timeout(
            OPERATION_TIMEOUT,
            self.leases.create(key.to_string(), self.value()),
        )
        .await
        .map_err(|_| format!("timed out after {OPERATION_TIMEOUT:?}"))?;
        match created {
            Ok(revision) => {
                info!(key = %key, revision, "lease acquired");
                self.hold(key, revision, sent_at);
                Ok(())
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                debug!(key = %key, "lease held by another instance");
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        }
    }

    async fn renew(&self, key: LeaseKey, held: Held) -> Result<(), String> {
        let sent_at = Instant::now();
        let updated = timeout(
            OPERATION_TIMEOUT,
            self.leases
                .update(key.to_string(), self.value(), held.revision),
        )
        .await
        .map_err(|_| format!("timed out after {OPERATION_TIMEOUT:?}"))?;
        match updated {
            Ok(revision) => {
                self.hold(key, revision, sent_at);
                Ok(())
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.recover(key, sent_at).await
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// After a renewal found another revision: keeps the lease when the entry is ours (an
    /// earlier write whose acknowledgement was lost) or gone (the bucket was recreated), and
    /// gives it up when another instance holds it.
    async fn recover(&self, key: LeaseKey, sent_at: Instant) -> Result<(), String> {
        let entry = timeout(OPERATION_TIMEOUT, self.leases.entry(key.to_string()))
            .await
            .map_err(|_| format!("timed out after {OPERATION_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        match entry {
            Some(entry)
                if entry.operation == kv::Operation::Put
                    && entry.value == self.ownership.consumer_id().as_bytes() =>
            {
                self.hold(key, entry.revision, sent_at);
                Ok(())
            }
            Some(entry) if entry.operation == kv::Operation::Put => {
                let holder = String::from_utf8_lossy(&entry.value).into_owned();
                warn!(key = %key, holder = %holder, "lease taken by another instance, its work stops");
                self.ownership.lock().held.remove(&key);
                Ok(())
            }
            _ => {
                info!(key = %key, "lease entry gone, creating it again");
                self.ownership.lock().held.remove(&key);
                self.acquire(key).await
            }
        }
    }

    async fn release(&self, key: LeaseKey, held: Held) -> Result<(), String> {
        self.ownership.lock().held.remove(&key);
        let deleted = timeout(
            OPERATION_TIMEOUT,
            self.leases
                .delete_expect_revision(key.to_string(), Some(held.revision)),
        )
        .await
        .map_err(|_| format!("timed out after {OPERATION_TIMEOUT:?}"))?;
        match deleted {
            Ok(()) => {
                info!(key = %key, "lease released");
                Ok(())
            }
            // The lease expires by itself once no longer renewed.
            Err(error) => Err(format!("failed to delete, it expires by itself: {error}")),
        }
    }

    fn hold(&self, key: LeaseKey, revision: u64, renewed_at: Instant) {
        self.ownership.lock().held.insert(
            key,
            Held {
                revision,
                renewed_at,
            },
        );
    }

    fn value(&self) -> Bytes {
        Bytes::from(self.ownership.consumer_id().to_owned())
    }

    /// Creates the streams and buckets again, after the leases bucket was deleted or a server
    /// lost it (a bucket created in memory by an earlier version).
    async fn recreate_bucket(&mut self) {
        match topology::ensure(&self.js, &self.nats).await {
            Ok(topology) => {
                info!(bucket = %topology.leases.name, "leases bucket created again");
                self.leases = topology.leases;
            }
            Err(error) => warn!(error = %error, "failed to create the leases bucket again"),
        }
    }

    /// Deletes every held lease and the member key, so other members take over at once.
    async fn release_all(&mut self) {
        let held: Vec<(LeaseKey, Held)> = self.ownership.lock().held.drain().collect();
        for (key, held) in held {
            if let Err(error) = self.release(key, held).await {
                warn!(key = %key, error = %error, "failed to release a lease at shutdown");
            }
        }
        let key = member_key(self.ownership.consumer_id());
        if let Ok(Err(error)) = timeout(OPERATION_TIMEOUT, self.leases.delete(&key)).await {
            warn!(key = %key, error = %error, "failed to delete the member key at shutdown");
        }
        self.ownership.notify_changed();
        info!("ownership stopped, leases released");
    }
}

fn member_key(consumer_id: &str) -> String {
    format!("{MEMBER_PREFIX}{consumer_id}")
}

/// Returns whether an error text says that the bucket's stream does not exist.
// NOTE: async-nats 0.52 reports a missing stream on KV operations only inside the text of
// a generic error kind, so the text is the only signal available here.
fn is_missing_stream(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("stream not found") || error.contains("no responders")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_round_trip() {
        assert_eq!(LeaseKey::batch(7).to_string(), "batch.7");
        assert_eq!(LeaseKey::task(3).to_string(), "task.3");
        assert_eq!(LeaseKey::parse("batch.7"), Some(LeaseKey::batch(7)));
        assert_eq!(LeaseKey::parse("task.3"), Some(LeaseKey::task(3)));
        assert_eq!(LeaseKey::parse("member.host-1"), None);
        assert_eq!(LeaseKey::parse("batch.x"), None);
    }

    #[test]
    fn rendezvous_owner_is_stable_and_order_free() {
        let members = ["a-1", "b-2", "c-3"];
        let reversed = ["c-3", "b-2", "a-1"];
        for id in 0..100 {
            let key = format!("batch.{id}");
            assert_eq!(
                rendezvous_owner(&key, members),
                rendezvous_owner(&key, reversed)
            );
        }
        assert_eq!(rendezvous_owner("batch.1", []), None);
    }

    #[test]
    fn new_member_takes_about_half_and_only_from_others() {
        let before = ["ingest-a-100"];
        let after = ["ingest-a-100", "ingest-b-200"];
        let mut moved = 0;
        for id in 0..1000 {
            let key = format!("batch.{id}");
            let old = rendezvous_owner(&key, before);
            let new = rendezvous_owner(&key, after);
            if old != new {
                assert_eq!(
                    new,
                    Some("ingest-b-200"),
                    "a key moves only to the new member"
                );
                moved += 1;
            }
        }
        assert!((400..=600).contains(&moved), "{moved} of 1000 keys moved");
    }

    #[test]
    fn leaving_member_moves_only_its_keys() {
        let three = ["a", "b", "c"];
        let two = ["a", "b"];
        for id in 0..500 {
            let key = format!("task.{id}");
            let old = rendezvous_owner(&key, three);
            if old != Some("c") {
                assert_eq!(rendezvous_owner(&key, two), old, "{key} moved needlessly");
            }
        }
    }

    #[test]
    fn score_is_fixed_across_builds() {
        // Instances of different builds must agree on owners, so the hash is pinned.
        assert_eq!(score("a", "batch.1"), score("a", "batch.1"));
        assert_ne!(score("a", "batch.1"), score("a", "batch.2"));
        assert_ne!(
            score("ab", "c"),
            score("a", "bc"),
            "the separator keeps them apart"
        );
    }

    #[test]
    fn should_run_needs_a_fresh_lease_and_ownership() {
        let now = Instant::now();
        let mut state = State {
            members: vec!["me".into()],
            ..State::default()
        };
        let key = LeaseKey::batch(1);
        state.wanted.insert(key);
        assert!(!state.should_run(key, "me", now), "no lease yet");

        state.held.insert(
            key,
            Held {
                revision: 1,
                renewed_at: now,
            },
        );
        assert!(state.should_run(key, "me", now));
        assert!(
            !state.should_run(key, "me", now + LEASE_TTL - LEASE_MARGIN),
            "a lease not renewed in time stops the work"
        );

        state.members = vec!["me".into(), "other".into()];
        let owner = state.owner(key).unwrap().to_owned();
        assert_eq!(
            state.should_run(key, "me", now),
            owner == "me",
            "a key owned by another member is handed over"
        );
    }

    #[test]
    fn update_replaces_only_its_kind() {
        let ownership = Ownership::new("me".into());
        ownership.update(LeaseKind::Batch, [1, 2], [1]);
        ownership.update(LeaseKind::Task, [9], []);
        ownership.update(LeaseKind::Batch, [2], []);
        let state = ownership.lock();
        let wanted: BTreeSet<LeaseKey> = state.wanted.iter().copied().collect();
        assert_eq!(
            wanted,
            BTreeSet::from([LeaseKey::batch(2), LeaseKey::task(9)])
        );
        assert!(state.active.is_empty());
    }
}
