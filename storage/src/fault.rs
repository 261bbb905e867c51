//! Fault injection. This is product code, not test scaffolding: the tests,
//! the end-to-end tests and `sohofs bench faults` share it, and the
//! failpoints are compiled into every build (an unarmed failpoint costs one
//! relaxed atomic load).
//!
//! Three tools:
//!
//! - [`FaultyShardStore`] wraps any [`ShardStore`]; its [`StoreFaults`]
//!   handle fails the next n calls, delays every call, corrupts bytes read or
//!   stored, reports the store full (`FsError::NoSpace`, as ENOSPC does), or
//!   partitions it (every call fails as unreachable).
//! - [`TransportFaults`], given to [`Transport::with_faults`], acts on the
//!   client side of RPC, per peer address: fail the next n calls, delay,
//!   drop (a call is never answered: the caller waits its call timeout) or
//!   partition (a call fails at once, as a refused connection does).
//! - Named failpoints ([`FAILPOINTS`]) at places where a crash or an error
//!   must be survived. They are armed from tests ([`arm`]), from the
//!   environment at process start (`SOHOFS_FAILPOINTS`), and while a process
//!   runs from a file it watches (`SOHOFS_FAILPOINTS_FILE`), so that an
//!   end-to-end test or a benchmark can arm one in one node of a real
//!   cluster. Syntax: `name[@scope]=action` entries separated by `;`, where
//!   action is `[COUNT*]off|error|nospace|unavailable|abort|sleep(MS)`.
//!   A scope names the process the entry is for (`node-3`, `meta`,
//!   `client`, set by the process with [`set_scope`]); an entry without one
//!   is for every process that reads it. `COUNT*` fires that many times and
//!   then disarms.
//!
//! [`Transport::with_faults`]: crate::rpc::Transport::with_faults

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{FsError, FsResult};
use crate::shard_store::{ShardKey, ShardStore, StoreStat};

// ----- failpoints -----

/// Every failpoint in the code, with what a crash there must preserve. A
/// failpoint not in this table cannot be armed.
pub const FAILPOINTS: &[(&str, &str)] = &[
    (
        SHARD_PUT_AFTER_TEMP_WRITE,
        "node, a shard's temp file is written and fsynced, not yet renamed: the put was never \
         acknowledged, so the client writes the shard on a spare host or fails the write without \
         a commit; the temp file is removed when the store opens again",
    ),
    (
        SHARD_PUT_AFTER_RENAME,
        "node, a shard is renamed into place but its directory is not yet fsynced: not \
         acknowledged; after a power cut the shard may or may not exist, and either way no \
         record names it unless the client committed it after a successful put elsewhere",
    ),
    (
        VOLUME_AFTER_SHARDS_PUT,
        "client, every shard of a piece is durable but the chunk record is not committed: \
         readers keep seeing the chunk's previous contents, fsync has not returned so nothing \
         acknowledged is lost, and the new shards are orphans no record names",
    ),
    (
        RPC_SERVE,
        "any server, before it answers a request: an error closes the connection without an \
         answer (a peer cut off by a refusing firewall); the request may or may not have taken \
         effect, so callers never resend after a timeout and every node call is idempotent",
    ),
    (
        REKEY_AFTER_CHUNK,
        "client running a rekey, right after one chunk was re-sealed and committed: the rest \
         of the policy's data is still under the older epoch, whose key stays until a later run \
         of the rekey (`sohofs keyring sync`) finishes; no chunk is lost either way",
    ),
    (
        NODE_HEARTBEAT,
        "node, before each heartbeat to meta: an error skips it; meta shows the node down after \
         its down-after window and clients stop placing shards on it; today nothing else depends on \
         heartbeats (healing will rebuild a node silent past the grace period)",
    ),
];

pub const SHARD_PUT_AFTER_TEMP_WRITE: &str = "shard_store.put.after_temp_write";
pub const SHARD_PUT_AFTER_RENAME: &str = "shard_store.put.after_rename";
pub const VOLUME_AFTER_SHARDS_PUT: &str = "volume.after_shards_put";
pub const RPC_SERVE: &str = "rpc.serve";
pub const REKEY_AFTER_CHUNK: &str = "rekey.after_chunk";
pub const NODE_HEARTBEAT: &str = "node.heartbeat";

/// Failpoints armed at process start: `name[@scope]=action;...`.
pub const FAILPOINTS_ENV: &str = "SOHOFS_FAILPOINTS";
/// A file of the same syntax, read again whenever it changes.
pub const FAILPOINTS_FILE_ENV: &str = "SOHOFS_FAILPOINTS_FILE";
/// How often the failpoints file is looked at.
pub const FAILPOINTS_FILE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest `sleep(MS)` a failpoint accepts.
pub const FAILPOINT_SLEEP_MS_MAX: u64 = 600_000;

/// What an armed failpoint does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Return `FsError::Io`.
    Error,
    /// Return `FsError::NoSpace`, as a full disk does.
    NoSpace,
    /// Return `FsError::Unavailable`, as an unreachable peer does.
    Unavailable,
    /// Stop the process at once, without unwinding (as SIGKILL or a power
    /// cut would, for what the process itself had not written out).
    Abort,
    /// Wait, then go on.
    Sleep(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    action: FailAction,
    /// Fires left before it disarms itself; `None` is for ever.
    remaining: Option<u64>,
}

#[derive(Default)]
struct Registry {
    armed: HashMap<&'static str, Armed>,
    hits: HashMap<&'static str, u64>,
}

/// Fast path: false while nothing is armed.
static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static SCOPE: OnceLock<String> = OnceLock::new();

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Names this process for scoped entries (`node-3`, `meta`, `client`).
/// Only the first call counts.
pub fn set_scope(scope: impl Into<String>) {
    let _ = SCOPE.set(scope.into());
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failpoint spec {spec:?}: {reason}")]
pub struct FailpointSpecError {
    pub spec: String,
    pub reason: &'static str,
}

fn known_name(name: &str) -> Option<&'static str> {
    FAILPOINTS.iter().map(|(n, _)| *n).find(|n| *n == name)
}

fn parse_action(text: &str) -> Result<Option<Armed>, &'static str> {
    let (remaining, kind) = match text.split_once('*') {
        Some((count, kind)) => (
            Some(
                count
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "COUNT in COUNT*action is not a number")?,
            ),
            kind.trim(),
        ),
        None => (None, text.trim()),
    };
    let action = match kind {
        "off" => return Ok(None),
        "error" => FailAction::Error,
        "nospace" => FailAction::NoSpace,
        "unavailable" => FailAction::Unavailable,
        "abort" => FailAction::Abort,
        sleep if sleep.starts_with("sleep(") && sleep.ends_with(')') => {
            let ms: u64 = sleep["sleep(".len()..sleep.len() - 1]
                .parse()
                .map_err(|_| "sleep(MS) needs a number of milliseconds")?;
            if ms > FAILPOINT_SLEEP_MS_MAX {
                return Err("sleep(MS) is longer than FAILPOINT_SLEEP_MS_MAX");
            }
            FailAction::Sleep(Duration::from_millis(ms))
        }
        _ => return Err("unknown action (off, error, nospace, unavailable, abort, sleep(MS))"),
    };
    Ok(Some(Armed { action, remaining }))
}

/// Parses `name[@scope]=action;...` into the entries meant for `scope`
/// (`None` on a process without a scope). Every entry is checked, also those
/// for other scopes, so a typo is found wherever it is read.
fn parse_specs(specs: &str, scope: Option<&str>) -> Result<Vec<(&'static str, Option<Armed>)>, FailpointSpecError> {
    let mut entries = Vec::new();
    for spec in specs.split([';', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
        let error = |reason| FailpointSpecError {
            spec: spec.to_string(),
            reason,
        };
        let (target, action) = spec.split_once('=').ok_or_else(|| error("expected name=action"))?;
        let (name, entry_scope) = match target.trim().split_once('@') {
            Some((name, entry_scope)) => (name, Some(entry_scope)),
            None => (target.trim(), None),
        };
        let name = known_name(name).ok_or_else(|| error("no failpoint of that name (see fault::FAILPOINTS)"))?;
        let armed = parse_action(action).map_err(error)?;
        if entry_scope.is_none() || entry_scope == scope {
            entries.push((name, armed));
        }
    }
    Ok(entries)
}

/// Arms (or with `off` disarms) the failpoints of `specs` that are meant for
/// this process.
pub fn arm_specs(specs: &str) -> Result<(), FailpointSpecError> {
    let entries = parse_specs(specs, SCOPE.get().map(String::as_str))?;
    let mut registry = registry();
    for (name, armed) in entries {
        match armed {
            Some(armed) => registry.armed.insert(name, armed),
            None => registry.armed.remove(name),
        };
    }
    ANY_ARMED.store(!registry.armed.is_empty(), Ordering::Release);
    Ok(())
}

/// Arms one failpoint: `arm("rpc.serve", "2*error")`.
pub fn arm(name: &str, action: &str) -> Result<(), FailpointSpecError> {
    arm_specs(&format!("{name}={action}"))
}

/// Disarms every failpoint of this process.
pub fn disarm_all() {
    let mut registry = registry();
    registry.armed.clear();
    ANY_ARMED.store(false, Ordering::Release);
}

/// How many times `name` has fired in this process.
pub fn hits(name: &str) -> u64 {
    registry().hits.get(name).copied().unwrap_or(0)
}

/// Arms what `SOHOFS_FAILPOINTS` says and starts watching
/// `SOHOFS_FAILPOINTS_FILE`; call once at process start, after
/// [`set_scope`]. A bad spec is an error, so a test never runs unarmed by
/// mistake.
pub fn init_from_env() -> Result<(), FailpointSpecError> {
    let from_env = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
    arm_specs(&from_env)?;
    if let Some(path) = std::env::var_os(FAILPOINTS_FILE_ENV) {
        let path = PathBuf::from(path);
        if let Ok(specs) = std::fs::read_to_string(&path) {
            arm_specs(&specs)?;
        }
        std::thread::Builder::new()
            .name("failpoints-file".into())
            .spawn(move || watch_file(path, from_env))
            .map_err(|_| FailpointSpecError {
                spec: String::new(),
                reason: "cannot start the failpoints file watcher",
            })?;
    }
    Ok(())
}

/// Re-arms from the environment's specs plus the file's whenever the file
/// changes (a missing file is an empty one).
fn watch_file(path: PathBuf, from_env: String) {
    let mut last = std::fs::read_to_string(&path).unwrap_or_default();
    loop {
        std::thread::sleep(FAILPOINTS_FILE_POLL_INTERVAL);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now == last {
            continue;
        }
        disarm_all();
        let armed = arm_specs(&from_env).and_then(|_| arm_specs(&now));
        match armed {
            Ok(()) => tracing::warn!(path = %path.display(), specs = %now.trim(), "failpoints re-armed"),
            Err(error) => tracing::error!(%error, "failpoints file not applied"),
        }
        last = now;
    }
}

/// Takes one firing of `name`, if armed.
fn fire(name: &'static str) -> Option<FailAction> {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let mut registry = registry();
    let armed = registry.armed.get_mut(name)?;
    let action = armed.action;
    if let Some(remaining) = armed.remaining.as_mut() {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            registry.armed.remove(name);
            ANY_ARMED.store(!registry.armed.is_empty(), Ordering::Release);
        }
    }
    *registry.hits.entry(name).or_default() += 1;
    Some(action)
}

fn act(name: &'static str, action: FailAction) -> FsResult<()> {
    match action {
        FailAction::Error => Err(FsError::Io(format!("failpoint {name}"))),
        FailAction::NoSpace => Err(FsError::NoSpace(format!("failpoint {name}"))),
        FailAction::Unavailable => Err(FsError::Unavailable(format!("failpoint {name}"))),
        FailAction::Abort => {
            eprintln!("sohofs: failpoint {name}: abort");
            std::process::abort()
        }
        FailAction::Sleep(_) => Ok(()),
    }
}

/// A failpoint on a blocking path: sleeps the thread for `sleep(MS)`.
pub fn failpoint(name: &'static str) -> FsResult<()> {
    match fire(name) {
        None => Ok(()),
        Some(FailAction::Sleep(pause)) => {
            std::thread::sleep(pause);
            Ok(())
        }
        Some(action) => act(name, action),
    }
}

/// A failpoint on an async path: `sleep(MS)` does not hold the thread.
pub async fn failpoint_async(name: &'static str) -> FsResult<()> {
    match fire(name) {
        None => Ok(()),
        Some(FailAction::Sleep(pause)) => {
            tokio::time::sleep(pause).await;
            Ok(())
        }
        Some(action) => act(name, action),
    }
}

// ----- faulty shard store -----

#[derive(Debug, Default, Clone)]
struct StoreFaultState {
    fail_next: u64,
    delay: Duration,
    corrupt_reads: bool,
    corrupt_writes: bool,
    full: bool,
    partitioned: bool,
}

/// The controls of one [`FaultyShardStore`]; clone the `Arc` to keep them.
#[derive(Debug, Default)]
pub struct StoreFaults {
    state: Mutex<StoreFaultState>,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl StoreFaults {
    fn state(&self) -> std::sync::MutexGuard<'_, StoreFaultState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `calls` calls (of any kind) fail with `FsError::Io`.
    pub fn fail_next(&self, calls: u64) {
        self.state().fail_next = calls;
    }

    /// Every call waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// `get` returns its payload with one byte flipped, after the store's own
    /// check (a bad read path): only the hash in the chunk record catches it.
    pub fn corrupt_reads(&self, on: bool) {
        self.state().corrupt_reads = on;
    }

    /// `put` stores its payload with one byte flipped and a header that
    /// matches the flipped bytes (corruption before the store hashed them):
    /// only the hash in the chunk record catches it.
    pub fn corrupt_writes(&self, on: bool) {
        self.state().corrupt_writes = on;
    }

    /// `put` fails with `FsError::NoSpace` and `stat` reports no free bytes;
    /// reads and deletes go on.
    pub fn set_full(&self, on: bool) {
        self.state().full = on;
    }

    /// Every call fails with `FsError::Unavailable`.
    pub fn partition(&self, on: bool) {
        self.state().partitioned = on;
    }

    /// Clears every fault.
    pub fn heal(&self) {
        *self.state() = StoreFaultState::default();
    }

    /// Calls that reached the wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls that a fault changed (failed or corrupted).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Counts the call, waits the delay, and fails it if a fault says so.
    fn enter(&self) -> FsResult<StoreFaultState> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let state = {
            let mut state = self.state();
            let snapshot = state.clone();
            if state.fail_next > 0 {
                state.fail_next -= 1;
            }
            snapshot
        };
        if !state.delay.is_zero() {
            std::thread::sleep(state.delay);
        }
        if state.partitioned {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(FsError::Unavailable(
                "shard store partitioned by fault injection".into(),
            ));
        }
        if state.fail_next > 0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(FsError::Io("shard store call failed by fault injection".into()));
        }
        Ok(state)
    }
}

/// A [`ShardStore`] that does what its [`StoreFaults`] say, and otherwise
/// passes every call to the store it wraps.
pub struct FaultyShardStore {
    inner: Arc<dyn ShardStore>,
    faults: Arc<StoreFaults>,
}

impl FaultyShardStore {
    pub fn new(inner: Arc<dyn ShardStore>) -> Self {
        FaultyShardStore {
            inner,
            faults: Arc::new(StoreFaults::default()),
        }
    }

    pub fn faults(&self) -> Arc<StoreFaults> {
        self.faults.clone()
    }
}

fn flip_first_byte(bytes: &mut [u8]) -> bool {
    match bytes.first_mut() {
        Some(byte) => {
            *byte ^= 0xff;
            true
        }
        None => false,
    }
}

impl ShardStore for FaultyShardStore {
    fn put(&self, key: ShardKey, payload: &[u8]) -> FsResult<()> {
        let state = self.faults.enter()?;
        if state.full {
            self.faults.injected.fetch_add(1, Ordering::Relaxed);
            return Err(FsError::NoSpace("shard store full by fault injection".into()));
        }
        if state.corrupt_writes {
            let mut damaged = payload.to_vec();
            if flip_first_byte(&mut damaged) {
                self.faults.injected.fetch_add(1, Ordering::Relaxed);
            }
            return self.inner.put(key, &damaged);
        }
        self.inner.put(key, payload)
    }

    fn get(&self, key: ShardKey) -> FsResult<Vec<u8>> {
        let state = self.faults.enter()?;
        let mut payload = self.inner.get(key)?;
        if state.corrupt_reads && flip_first_byte(&mut payload) {
            self.faults.injected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(payload)
    }

    fn delete(&self, key: ShardKey) -> FsResult<()> {
        self.faults.enter()?;
        self.inner.delete(key)
    }

    fn stat(&self) -> FsResult<StoreStat> {
        let state = self.faults.enter()?;
        let mut stat = self.inner.stat()?;
        if state.full {
            stat.free_bytes = 0;
        }
        Ok(stat)
    }

    fn list(&self) -> FsResult<Vec<ShardKey>> {
        self.faults.enter()?;
        self.inner.list()
    }

    fn age(&self, key: ShardKey) -> FsResult<Option<std::time::Duration>> {
        self.faults.enter()?;
        self.inner.age(key)
    }
}

// ----- faulty transport -----

#[derive(Debug, Default, Clone)]
struct PeerFaults {
    fail_next: u64,
    delay: Duration,
    dropped: bool,
    partitioned: bool,
}

/// Faults on the client side of RPC, per peer address (`"*"` for every
/// peer). Shared by every [`RpcClient`] made from the same [`Transport`].
///
/// [`RpcClient`]: crate::rpc::RpcClient
/// [`Transport`]: crate::rpc::Transport
#[derive(Debug, Default)]
pub struct TransportFaults {
    peers: Mutex<HashMap<String, PeerFaults>>,
    injected: AtomicU64,
}

/// The key of a rule for every peer.
pub const EVERY_PEER: &str = "*";

impl TransportFaults {
    pub fn new() -> Arc<Self> {
        Arc::new(TransportFaults::default())
    }

    fn edit(&self, addr: &str, change: impl FnOnce(&mut PeerFaults)) {
        let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(peers.entry(addr.to_string()).or_default());
    }

    /// The next `calls` calls to `addr` fail as if the connection broke.
    pub fn fail_next(&self, addr: &str, calls: u64) {
        self.edit(addr, |p| p.fail_next = calls);
    }

    /// Calls to `addr` wait this long before they are sent.
    pub fn set_delay(&self, addr: &str, delay: Duration) {
        self.edit(addr, |p| p.delay = delay);
    }

    /// Calls to `addr` are lost: each waits its call timeout and fails, as
    /// with a network that drops packets.
    pub fn drop_calls(&self, addr: &str, on: bool) {
        self.edit(addr, |p| p.dropped = on);
    }

    /// Calls to `addr` fail at once, as with a refused connection.
    pub fn partition(&self, addr: &str, on: bool) {
        self.edit(addr, |p| p.partitioned = on);
    }

    /// Clears every fault of `addr`.
    pub fn heal(&self, addr: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(addr);
    }

    /// Calls a fault failed.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Applied by `RpcClient::call` before a call to `addr` goes out.
    pub(crate) async fn before_call(&self, addr: &str, call_timeout: Duration) -> FsResult<()> {
        let rules: Vec<PeerFaults> = {
            let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            [addr, EVERY_PEER]
                .iter()
                .filter_map(|key| {
                    let rule = peers.get_mut(*key)?;
                    let snapshot = rule.clone();
                    rule.fail_next = rule.fail_next.saturating_sub(1);
                    Some(snapshot)
                })
                .collect()
        };
        for rule in rules {
            if !rule.delay.is_zero() {
                tokio::time::sleep(rule.delay).await;
            }
            if rule.partitioned {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Err(FsError::Unavailable(format!(
                    "connect to {addr}: partitioned by fault injection"
                )));
            }
            if rule.dropped {
                self.injected.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(call_timeout).await;
                return Err(FsError::Unavailable(format!(
                    "{addr}: no answer in time (dropped by fault injection)"
                )));
            }
            if rule.fail_next > 0 {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Err(FsError::Unavailable(format!(
                    "{addr}: connection broken by fault injection"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_store::{conformance, MemShardStore};

    /// Failpoints are process-global: tests that arm them take this lock.
    static FAILPOINT_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn faulty_store_with_nothing_armed_conforms() {
        let store = FaultyShardStore::new(Arc::new(MemShardStore::new(1 << 20)));
        conformance(&store);
        assert_eq!(store.faults().injected(), 0);
    }

    #[test]
    fn faulty_disk_store_with_nothing_armed_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::shard_store::DiskShardStore::open(dir.path()).unwrap();
        conformance(&FaultyShardStore::new(Arc::new(disk)));
    }

    fn key(index: u8) -> ShardKey {
        ShardKey {
            piece_id: 42,
            shard_index: index,
        }
    }

    #[test]
    fn store_faults_do_what_they_say() {
        let store = FaultyShardStore::new(Arc::new(MemShardStore::new(1 << 20)));
        let faults = store.faults();
        faults.fail_next(2);
        assert!(matches!(store.put(key(0), b"abc"), Err(FsError::Io(_))));
        assert!(matches!(store.get(key(0)), Err(FsError::Io(_))));
        store.put(key(0), b"abc").unwrap();
        assert_eq!(store.get(key(0)).unwrap(), b"abc");

        faults.corrupt_reads(true);
        assert_eq!(store.get(key(0)).unwrap(), [b'a' ^ 0xff, b'b', b'c']);
        faults.corrupt_reads(false);
        assert_eq!(store.get(key(0)).unwrap(), b"abc");

        faults.corrupt_writes(true);
        store.put(key(1), b"xyz").unwrap();
        faults.corrupt_writes(false);
        assert_eq!(store.get(key(1)).unwrap(), [b'x' ^ 0xff, b'y', b'z']);

        faults.set_full(true);
        assert!(matches!(store.put(key(2), b"q"), Err(FsError::NoSpace(_))));
        assert_eq!(store.stat().unwrap().free_bytes, 0);
        assert_eq!(store.get(key(0)).unwrap(), b"abc");
        faults.set_full(false);

        faults.partition(true);
        assert!(matches!(store.get(key(0)), Err(FsError::Unavailable(_))));
        assert!(matches!(store.stat(), Err(FsError::Unavailable(_))));
        faults.heal();
        assert_eq!(store.get(key(0)).unwrap(), b"abc");
        assert_eq!(faults.injected(), 7);
    }

    #[test]
    fn failpoint_specs_parse_and_count_down() {
        let _serial = FAILPOINT_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        disarm_all();
        assert_eq!(failpoint(VOLUME_AFTER_SHARDS_PUT), Ok(()));
        arm(VOLUME_AFTER_SHARDS_PUT, "2*nospace").unwrap();
        assert!(matches!(failpoint(VOLUME_AFTER_SHARDS_PUT), Err(FsError::NoSpace(_))));
        assert!(matches!(failpoint(VOLUME_AFTER_SHARDS_PUT), Err(FsError::NoSpace(_))));
        assert_eq!(failpoint(VOLUME_AFTER_SHARDS_PUT), Ok(()));
        assert!(hits(VOLUME_AFTER_SHARDS_PUT) >= 2);

        // Only failpoints that no other unit test passes through: the
        // registry is per process.
        arm_specs("volume.after_shards_put=error; node.heartbeat=sleep(1)").unwrap();
        assert!(matches!(failpoint(VOLUME_AFTER_SHARDS_PUT), Err(FsError::Io(_))));
        assert_eq!(failpoint(NODE_HEARTBEAT), Ok(()));
        arm(VOLUME_AFTER_SHARDS_PUT, "off").unwrap();
        assert_eq!(failpoint(VOLUME_AFTER_SHARDS_PUT), Ok(()));
        disarm_all();
        assert_eq!(failpoint(NODE_HEARTBEAT), Ok(()));
    }

    #[test]
    fn failpoint_specs_are_checked_and_scoped() {
        assert!(parse_specs("no.such.point=error", None).is_err());
        assert!(parse_specs("rpc.serve", None).is_err());
        assert!(parse_specs("rpc.serve=explode", None).is_err());
        assert!(parse_specs("rpc.serve=sleep(x)", None).is_err());
        assert!(parse_specs("rpc.serve=x*error", None).is_err());
        let specs = "rpc.serve@node-2=error;node.heartbeat=unavailable;shard_store.put.after_rename@meta=abort";
        let for_node_2 = parse_specs(specs, Some("node-2")).unwrap();
        assert_eq!(
            for_node_2.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            [RPC_SERVE, NODE_HEARTBEAT]
        );
        let for_node_3 = parse_specs(specs, Some("node-3")).unwrap();
        assert_eq!(
            for_node_3,
            [(
                NODE_HEARTBEAT,
                Some(Armed {
                    action: FailAction::Unavailable,
                    remaining: None
                })
            )]
        );
        assert_eq!(
            parse_specs("volume.after_shards_put=3*sleep(250)", None).unwrap(),
            [(
                VOLUME_AFTER_SHARDS_PUT,
                Some(Armed {
                    action: FailAction::Sleep(Duration::from_millis(250)),
                    remaining: Some(3)
                })
            )]
        );
    }

    #[tokio::test]
    async fn transport_faults_fail_delay_drop_and_partition() {
        let faults = TransportFaults::new();
        let timeout = Duration::from_millis(50);
        assert_eq!(faults.before_call("a:1", timeout).await, Ok(()));
        faults.fail_next("a:1", 1);
        assert!(faults.before_call("a:1", timeout).await.is_err());
        assert_eq!(faults.before_call("a:1", timeout).await, Ok(()));
        faults.partition("b:2", true);
        assert!(faults.before_call("b:2", timeout).await.is_err());
        assert_eq!(faults.before_call("a:1", timeout).await, Ok(()));
        faults.heal("b:2");
        faults.drop_calls(EVERY_PEER, true);
        let started = std::time::Instant::now();
        assert!(faults.before_call("c:3", timeout).await.is_err());
        assert!(started.elapsed() >= timeout);
        faults.heal(EVERY_PEER);
        faults.set_delay("a:1", Duration::from_millis(30));
        let started = std::time::Instant::now();
        assert_eq!(faults.before_call("a:1", timeout).await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(faults.injected(), 3);
    }
}
