//! The heal service, run by meta: every [`HEAL_INTERVAL`] it takes a view of
//! the cluster, has [`crate::repair::plan_repairs`] decide what to rebuild,
//! and carries the plan out: fetch k readable shards of a stripe, rebuild the
//! missing ones with Reed-Solomon, put them on their new nodes, and commit
//! the new locations to the chunk record ([`Meta::commit_repair`], which
//! drops the repair if a client changed the chunk meanwhile). Shards are
//! ciphertext and carry their BLAKE3 in the record: meta never needs a key,
//! and every rebuilt shard is checked against the hash its writer recorded.
//!
//! When nothing is missing it carries out drains (shards on draining nodes
//! move to hosts not in their stripe) in the same way, and then rebalancing
//! ([`crate::repair::plan_rebalance`]) toward nodes that hold fewer shards.
//! Every [`HealSettings::orphan_sweep_interval`] it also lists each node's
//! shards and queues for the collector those that no record names and no
//! deletion covers, once they are older than the safety window.
//!
//! It also answers `Scrub`: every reachable node re-hashes its shards, the
//! corrupt ones become suspects, and repair passes run until they are
//! rewritten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use sohofs_format::messages::{RebuildStatus, ScrubReport, ShardRef};
use sohofs_format::NodeId;

use crate::error::{FsError, FsResult};
use crate::meta::Meta;
use crate::peers::NodeClient;
use crate::repair::{
    pick_orphans, plan_rebalance, plan_repairs, RepairCommand, ShardMove, REBALANCE_MOVES_PER_PASS_MAX,
};
use crate::rpc::Transport;
use crate::shard_store::ShardKey;

/// A node silent for this long is lost and its shards are rebuilt: a
/// workstation that reboots must not trigger a rebuild.
pub const GRACE_PERIOD_DEFAULT: Duration = Duration::from_secs(600);
/// Shard bytes rebuilt per second at most, so that the office keeps working.
pub const REBUILD_BYTES_PER_S_DEFAULT: u64 = 32 * 1024 * 1024;
/// Between repair passes (each scans every chunk record).
pub const HEAL_INTERVAL: Duration = Duration::from_secs(2);
/// How long meta waits for one node's scrub.
pub const SCRUB_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long meta waits for one page of a node's shard listing (a listing
/// reads the node's whole shard folder).
pub const SHARD_LIST_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Repair passes a scrub runs at most before it answers.
pub const SCRUB_REPAIR_PASSES_MAX: usize = 10;
/// A shard that nothing names is collected only once it is this old: a
/// write puts its shards before it commits them, and must never lose one.
pub const ORPHAN_SAFETY_WINDOW_DEFAULT: Duration = Duration::from_secs(3600);
/// How often meta lists every node's shards to find orphans.
pub const ORPHAN_SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealSettings {
    pub grace_period: Duration,
    /// 0: no limit. Also bounds drains and rebalancing.
    pub rebuild_bytes_per_s: u64,
    /// Unnamed shards younger than this are kept.
    pub orphan_safety_window: Duration,
    /// `None`: orphans are never looked for.
    pub orphan_sweep_interval: Option<Duration>,
}

impl Default for HealSettings {
    fn default() -> Self {
        HealSettings {
            grace_period: GRACE_PERIOD_DEFAULT,
            rebuild_bytes_per_s: REBUILD_BYTES_PER_S_DEFAULT,
            orphan_safety_window: ORPHAN_SAFETY_WINDOW_DEFAULT,
            orphan_sweep_interval: Some(ORPHAN_SWEEP_INTERVAL_DEFAULT),
        }
    }
}

/// Whether `mv` moves a readable shard from a reachable node (a drain or a
/// rebalancing move), not one that is missing or corrupt.
fn view_moves_healthy(view: &crate::repair::ClusterView, mv: &ShardMove) -> bool {
    match mv.from {
        // A corrupt shard is rewritten in place (from == to); a missing one
        // has no node or a lost or unknown one.
        Some(from) if from != mv.to => view.nodes.iter().any(|n| n.id == from && n.reachable && !n.lost),
        _ => false,
    }
}

pub struct Healer {
    meta: Arc<Meta>,
    transport: Transport,
    clients: Mutex<HashMap<NodeId, Arc<NodeClient>>>,
    /// One pass at a time: the background loop and a scrub's passes.
    pass_lock: tokio::sync::Mutex<()>,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FsError::Io(format!("heal task failed: {e}")))?
}

impl Healer {
    pub fn new(meta: Arc<Meta>, transport: Transport) -> Healer {
        Healer {
            meta,
            transport,
            clients: Mutex::new(HashMap::new()),
            pass_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs repair passes, and orphan sweeps, forever.
    pub async fn run(&self) {
        let mut last_sweep = Instant::now();
        loop {
            tokio::time::sleep(HEAL_INTERVAL).await;
            let _pass = self.pass_lock.lock().await;
            if let Err(error) = self.pass().await.map(drop) {
                tracing::warn!(%error, "repair pass failed");
            }
            let settings = self.meta.heal_settings();
            if let Some(interval) = settings.orphan_sweep_interval {
                if last_sweep.elapsed() >= interval {
                    last_sweep = Instant::now();
                    match self.collect_orphans(settings.orphan_safety_window).await {
                        Ok(0) => {}
                        Ok(queued) => tracing::info!(queued, "orphan shards queued for collection"),
                        Err(error) => tracing::warn!(%error, "orphan sweep failed"),
                    }
                }
            }
        }
    }

    /// Lists the shards of every reachable node and queues for the
    /// collector those that no chunk record names, no deletion covers, and
    /// that are older than `safety_window` (`repair::pick_orphans`).
    /// Returns how many were queued.
    pub async fn collect_orphans(&self, safety_window: Duration) -> FsResult<u64> {
        let meta = self.meta.clone();
        let health = blocking(move || meta.node_health()).await?;
        let mut listings = Vec::new();
        for (node, addr) in health.iter().filter(|(n, _)| n.reachable) {
            let client = NodeClient::with_call_timeout(addr.clone(), self.transport.clone(), SHARD_LIST_CALL_TIMEOUT);
            match client.list_all_shards().await {
                Ok(listed) => listings.push((node.id, listed)),
                Err(error) => tracing::debug!(node = node.id, %error, "cannot list shards; swept next time"),
            }
        }
        // References are read after the listings: a shard committed while a
        // node listed is seen as named.
        let meta = self.meta.clone();
        let (referenced, queued) = blocking(move || meta.shard_references()).await?;
        let mut total = 0u64;
        for (node, listed) in listings {
            let orphans = pick_orphans(node, &listed, &referenced, &queued, safety_window);
            if orphans.is_empty() {
                continue;
            }
            total += orphans.len() as u64;
            let meta = self.meta.clone();
            blocking(move || meta.queue_orphans(node, &orphans)).await?;
        }
        Ok(total)
    }

    fn client(&self, id: NodeId, addrs: &HashMap<NodeId, String>) -> FsResult<Arc<NodeClient>> {
        let addr = addrs
            .get(&id)
            .ok_or_else(|| FsError::Unavailable(format!("node {id} is not registered")))?;
        let mut clients = self.clients.lock().expect("heal clients lock");
        let client = clients
            .entry(id)
            .or_insert_with(|| Arc::new(NodeClient::new(addr.clone(), self.transport.clone())));
        if client.addr() != addr {
            *client = Arc::new(NodeClient::new(addr.clone(), self.transport.clone()));
        }
        Ok(client.clone())
    }

    /// Plans and carries out one round of repairs; returns the old locations
    /// of the shards it repaired, and the suspects no record references.
    /// The caller holds `pass_lock`.
    async fn pass(&self) -> FsResult<(Vec<ShardRef>, Vec<ShardRef>)> {
        let meta = self.meta.clone();
        let (view, stripes, addrs) = blocking(move || meta.repair_view()).await?;
        let plan = plan_repairs(&view, &stripes);
        self.meta.forget_suspects(&plan.stale_suspects);
        let mut status = RebuildStatus {
            chunks_left: plan.chunks_left,
            bytes_left: plan.bytes_left,
            bytes_per_s: 0,
            chunks_unrecoverable: plan.chunks_unrecoverable,
            nodes_lost: Vec::new(),
        };
        self.meta.set_rebuild_status(status.clone());
        let mut repaired = Vec::new();
        let mut commands = plan.commands;
        if commands.is_empty() && plan.chunks_left == 0 && plan.drain_shards_left == 0 {
            // Nothing to repair or drain: even out the shard counts (a node
            // just added holds none).
            commands = plan_rebalance(&view, &stripes, REBALANCE_MOVES_PER_PASS_MAX);
        }
        if commands.is_empty() {
            return Ok((repaired, plan.stale_suspects));
        }
        tracing::info!(
            chunks = plan.chunks_left,
            bytes = plan.bytes_left,
            draining = plan.drain_shards_left,
            commands = commands.len(),
            "rebuilding, draining or rebalancing"
        );
        let rate = self.meta.heal_settings().rebuild_bytes_per_s;
        let mut commands_of_chunk: HashMap<(u64, u64), usize> = HashMap::new();
        // Only commands that restore a missing or corrupt shard count toward
        // the rebuild progress; drains and rebalancing move healthy shards.
        let restores = |command: &RepairCommand| command.moves.iter().any(|mv| !view_moves_healthy(&view, mv));
        for command in commands.iter().filter(|c| restores(c)) {
            *commands_of_chunk.entry((command.ino, command.chunk_index)).or_default() += 1;
        }
        let started = Instant::now();
        let mut written = 0u64;
        let mut failures = 0usize;
        for command in &commands {
            match self.execute(command, &addrs).await {
                Ok(done) => {
                    let bytes = command.shard_bytes * done.len() as u64;
                    written += bytes;
                    if restores(command) {
                        status.bytes_left = status.bytes_left.saturating_sub(bytes);
                    }
                    if restores(command) && done.len() == command.moves.len() {
                        let left = commands_of_chunk
                            .get_mut(&(command.ino, command.chunk_index))
                            .expect("every command's chunk is counted");
                        *left -= 1;
                        if *left == 0 {
                            status.chunks_left = status.chunks_left.saturating_sub(1);
                        }
                    }
                    repaired.extend(done.iter().filter_map(|mv| {
                        mv.from.map(|node| ShardRef {
                            node,
                            piece_id: command.piece_id,
                            shard_index: mv.shard_index,
                        })
                    }));
                }
                Err(error) => {
                    failures += 1;
                    tracing::debug!(piece = %format!("{:032x}", command.piece_id), %error, "repair deferred");
                }
            }
            let elapsed = started.elapsed();
            status.bytes_per_s = (written as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
            self.meta.set_rebuild_status(status.clone());
            if rate > 0 {
                let due = Duration::from_secs_f64(written as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(elapsed) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        tracing::info!(
            repaired = repaired.len(),
            failures,
            bytes = written,
            seconds = started.elapsed().as_secs_f64(),
            "repair pass done"
        );
        Ok((repaired, plan.stale_suspects))
    }

    /// Rebuilds the shards of one command; returns the moves committed
    /// (none if the chunk changed meanwhile).
    async fn execute(&self, command: &RepairCommand, addrs: &HashMap<NodeId, String>) -> FsResult<Vec<ShardMove>> {
        // A drain or rebalancing move copies a readable shard: one read
        // instead of k and a decode. Anything else, or a copy that fails,
        // rebuilds from k sources.
        let is_copy = |mv: &ShardMove| {
            mv.from
                .is_some_and(|from| from != mv.to && command.sources.contains(&(mv.shard_index, from)))
        };
        if command.moves.iter().all(is_copy) {
            match self.copy(command, addrs).await {
                Ok(done) => return Ok(done),
                Err(error) => tracing::debug!(%error, "shard copy failed; rebuilding it from the stripe"),
            }
        }
        self.rebuild(command, addrs).await
    }

    /// Copies each moved shard from its node to its target, checked against
    /// the record's hash, then commits the moves.
    async fn copy(&self, command: &RepairCommand, addrs: &HashMap<NodeId, String>) -> FsResult<Vec<ShardMove>> {
        let piece_id = command.piece_id;
        let mut payloads = Vec::with_capacity(command.moves.len());
        for mv in &command.moves {
            let from = mv.from.expect("a copy has a source node");
            let key = ShardKey {
                piece_id,
                shard_index: mv.shard_index,
            };
            let payload = self.client(from, addrs)?.get_shard(key).await?;
            let hash = command.hashes[mv.shard_index as usize];
            let checked = {
                let payload = payload.clone();
                blocking(move || Ok(*blake3::hash(&payload).as_bytes() == hash)).await?
            };
            if !checked {
                self.meta.add_suspects(&[ShardRef {
                    node: from,
                    piece_id,
                    shard_index: mv.shard_index,
                }]);
                return Err(FsError::Corrupt("a shard to move does not match its record".into()));
            }
            payloads.push(payload);
        }
        let done = self
            .place_and_commit(command, addrs, |index| {
                let position = command
                    .moves
                    .iter()
                    .position(|mv| mv.shard_index == index)
                    .expect("every move has its payload");
                &payloads[position]
            })
            .await?;
        tracing::debug!(piece = %format!("{piece_id:032x}"), moved = done.len(), "shards copied");
        Ok(done)
    }

    /// Rebuilds the moved shards from k sources, then places and commits them.
    async fn rebuild(&self, command: &RepairCommand, addrs: &HashMap<NodeId, String>) -> FsResult<Vec<ShardMove>> {
        let k = command.data_shards as usize;
        let width = k + command.parity_shards as usize;
        let piece_id = command.piece_id;
        let fetch = |(index, node): (u8, NodeId)| {
            let client = self.client(node, addrs);
            async move {
                let result = match client {
                    Ok(client) => client
                        .get_shard(ShardKey {
                            piece_id,
                            shard_index: index,
                        })
                        .await
                        .map(|bytes| bytes.to_vec()),
                    Err(error) => Err(error),
                };
                (index, node, result)
            }
        };
        let mut sources = command.sources.iter().copied();
        let mut requests: FuturesUnordered<_> = sources.by_ref().take(k).map(fetch).collect();
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut fetched: Vec<(u8, NodeId)> = Vec::new();
        let mut corrupt = Vec::new();
        while let Some((index, node, result)) = requests.next().await {
            match result {
                Ok(payload) => {
                    shards[index as usize] = Some(payload);
                    fetched.push((index, node));
                    if fetched.len() == k {
                        break;
                    }
                    continue;
                }
                Err(error) if error.is_corruption() => corrupt.push(ShardRef {
                    node,
                    piece_id,
                    shard_index: index,
                }),
                Err(_) => {}
            }
            if let Some(next) = sources.next() {
                requests.push(fetch(next));
            }
        }
        drop(requests);
        if fetched.len() < k {
            self.meta.add_suspects(&corrupt);
            return Err(FsError::Unavailable(format!(
                "only {} of the {k} shards needed could be read",
                fetched.len()
            )));
        }
        let hashes = command.hashes.clone();
        let wanted: Vec<u8> = command.moves.iter().map(|mv| mv.shard_index).collect();
        let (parity_shards, fetched_for_check) = (command.parity_shards as usize, fetched.clone());
        // Sources and results are checked against the hashes the writer put
        // in the record: a repair never spreads a bad shard.
        let rebuilt = blocking(move || {
            let bad: Vec<(u8, NodeId)> = fetched_for_check
                .iter()
                .filter(|(index, _)| {
                    let shard = shards[*index as usize].as_deref().unwrap_or_default();
                    *blake3::hash(shard).as_bytes() != hashes[*index as usize]
                })
                .copied()
                .collect();
            if !bad.is_empty() {
                return Ok(Err(bad));
            }
            let all = crate::codec::rebuild_shards(shards, k, parity_shards)?;
            for index in &wanted {
                if *blake3::hash(&all[*index as usize]).as_bytes() != hashes[*index as usize] {
                    return Err(FsError::Corrupt("a rebuilt shard does not match its record".into()));
                }
            }
            Ok(Ok(all))
        })
        .await?;
        let rebuilt = match rebuilt {
            Ok(all) => all,
            Err(bad) => {
                let refs: Vec<ShardRef> = bad
                    .into_iter()
                    .map(|(shard_index, node)| ShardRef {
                        node,
                        piece_id,
                        shard_index,
                    })
                    .collect();
                self.meta.add_suspects(&refs);
                return Err(FsError::Corrupt("a source shard does not match its record".into()));
            }
        };
        self.place_and_commit(command, addrs, |index| &rebuilt[index as usize])
            .await
    }

    /// Puts each moved shard (`payload_of(index)`) on its target, then
    /// commits the moves that landed; returns them (none if the chunk
    /// changed meanwhile).
    async fn place_and_commit<'p>(
        &self,
        command: &RepairCommand,
        addrs: &HashMap<NodeId, String>,
        payload_of: impl Fn(u8) -> &'p [u8],
    ) -> FsResult<Vec<ShardMove>> {
        let piece_id = command.piece_id;
        let puts = command.moves.iter().map(|mv| {
            let client = self.client(mv.to, addrs);
            let payload = payload_of(mv.shard_index);
            let hash = command.hashes[mv.shard_index as usize];
            async move {
                let key = ShardKey {
                    piece_id,
                    shard_index: mv.shard_index,
                };
                let result = match client {
                    Ok(client) => client.put_shard_hashed(key, payload, hash).await,
                    Err(error) => Err(error),
                };
                (*mv, result)
            }
        });
        let mut placed = Vec::new();
        for (mv, result) in futures::future::join_all(puts).await {
            match result {
                Ok(()) => placed.push(mv),
                Err(error) => tracing::debug!(node = mv.to, %error, "rebuilt shard not placed"),
            }
        }
        if placed.is_empty() {
            return Err(FsError::Unavailable("no rebuilt shard could be placed".into()));
        }
        let meta = self.meta.clone();
        let (ino, chunk_index, moves) = (command.ino, command.chunk_index, placed.clone());
        let committed = blocking(move || meta.commit_repair(ino, chunk_index, piece_id, &moves)).await?;
        if !committed {
            tracing::info!(piece = %format!("{piece_id:032x}"), "chunk changed during repair; repair dropped");
            return Ok(Vec::new());
        }
        let repaired: Vec<ShardRef> = placed
            .iter()
            .filter_map(|mv| {
                mv.from.map(|node| ShardRef {
                    node,
                    piece_id,
                    shard_index: mv.shard_index,
                })
            })
            .collect();
        self.meta.forget_suspects(&repaired);
        Ok(placed)
    }

    /// Has every reachable node re-hash its shards (at most `bytes_per_s`
    /// each; 0: the node's own setting), then repairs what they
    /// found; answers when the repairs are done (or after
    /// [`SCRUB_REPAIR_PASSES_MAX`] passes).
    pub async fn scrub_now(&self, bytes_per_s: u64) -> FsResult<ScrubReport> {
        let _pass = self.pass_lock.lock().await;
        let meta = self.meta.clone();
        let health = blocking(move || meta.node_health()).await?;
        let scrubs = health
            .into_iter()
            .filter(|(node, _)| node.reachable)
            .map(|(node, addr)| {
                let client = NodeClient::with_call_timeout(addr.clone(), self.transport.clone(), SCRUB_CALL_TIMEOUT);
                async move { (node.id, addr, client.scrub(bytes_per_s).await) }
            });
        let mut report = ScrubReport::default();
        let mut found: HashSet<ShardRef> = HashSet::new();
        let mut scrubbed = Vec::new();
        for (node, addr, result) in futures::future::join_all(scrubs).await {
            match result {
                Ok((checked, corrupt)) => {
                    scrubbed.push((node, addr));
                    report.nodes_scrubbed += 1;
                    report.shards_checked += checked;
                    found.extend(corrupt.into_iter().map(|key| ShardRef {
                        node,
                        piece_id: key.piece_id,
                        shard_index: key.shard_index,
                    }));
                }
                Err(error) => tracing::warn!(node, %error, "node could not scrub"),
            }
        }
        // A shard file deleted under a node hashes as nothing: compare what
        // the records place on each scrubbed node with what it holds.
        let missing = self.missing_shards(&scrubbed).await?;
        if !missing.is_empty() {
            tracing::warn!(missing = missing.len(), "scrub found shards missing from their nodes");
        }
        found.extend(missing);
        report.shards_corrupt = found.len() as u64;
        if found.is_empty() {
            return Ok(report);
        }
        let found_list: Vec<ShardRef> = found.iter().copied().collect();
        tracing::warn!(corrupt = found.len(), "scrub found corrupt shards; repairing");
        self.meta.add_suspects(&found_list);
        let (mut repaired, mut unreferenced) = (HashSet::new(), HashSet::new());
        for _ in 0..SCRUB_REPAIR_PASSES_MAX {
            let (done, stale) = self.pass().await?;
            repaired.extend(done.into_iter().filter(|shard| found.contains(shard)));
            unreferenced.extend(stale.into_iter().filter(|shard| found.contains(shard)));
            if found.iter().all(|shard| !self.meta.is_suspect(shard)) {
                break;
            }
            tokio::time::sleep(HEAL_INTERVAL).await;
        }
        report.shards_repaired = repaired.len() as u64;
        report.shards_unreferenced = unreferenced.len() as u64;
        Ok(report)
    }

    /// Shards the chunk records place on `nodes` that those nodes do not
    /// hold. A shard is referenced only once stored, so one referenced
    /// before the listing and absent from it is lost, unless the collector
    /// removed it meanwhile because its chunk changed: the references are
    /// read again and only shards still referenced count.
    async fn missing_shards(&self, nodes: &[(NodeId, String)]) -> FsResult<Vec<ShardRef>> {
        let meta = self.meta.clone();
        let (before, _) = blocking(move || meta.shard_references()).await?;
        let mut candidates = Vec::new();
        for (node, addr) in nodes {
            let client = NodeClient::with_call_timeout(addr.clone(), self.transport.clone(), SCRUB_CALL_TIMEOUT);
            let held: HashSet<(u128, u8)> = match client.list_all_shards().await {
                Ok(listed) => listed.into_iter().map(|s| (s.piece_id, s.shard_index)).collect(),
                Err(error) => {
                    tracing::warn!(node, %error, "cannot list a node's shards; its missing shards are not looked for");
                    continue;
                }
            };
            candidates.extend(
                before
                    .iter()
                    .filter(|r| r.node == *node && !held.contains(&(r.piece_id, r.shard_index)))
                    .copied(),
            );
        }
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let meta = self.meta.clone();
        let (after, _) = blocking(move || meta.shard_references()).await?;
        candidates.retain(|shard| after.contains(shard));
        Ok(candidates)
    }
}
