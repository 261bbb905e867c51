//! `sohofs bench faults`: the fault-injection benchmark.
//!
//! It starts its own 6-node 4+2 cluster the way `sohofs up` does (one meta
//! and six node processes of this binary with the arguments `up` gives
//! them, under a scratch folder; nodes 5 and 6 keep their shards on small
//! tmpfs mounts so that their disks can really fill up), with a grace
//! period of [`GRACE_PERIOD_S`] and no rebuild bandwidth limit. It drives the
//! cluster with an in-process client (the volume API, without FUSE), injects
//! faults and checks every byte read back:
//!
//! | scenario | fault | how |
//! |---|---|---|
//! | healthy write / read | none | sequential 1 MiB writes, fsync; read by a fresh client |
//! | read, 1 / 2 nodes killed | node processes SIGKILLed | read by a fresh client |
//! | rebuild | node 3 SIGKILLed; once meta shows it lost, a spare node 7 is started (6 hosts for width 6 leave no free host) | runs last, so that node 7 changes no other row; timed to zero degraded chunks; then read with node 3 down, and with nodes 1 and 2 killed too |
//! | SIGKILL during writes | node 3 SIGKILLed halfway | fsync every 4 MiB; what was fsynced must read back |
//! | disk full | tmpfs of node 5 filled, then node 6's | writes go on at 5 shards; ENOSPC only with 4 hosts left (< quorum 5) |
//! | network cut | failpoints `rpc.serve` + `node.heartbeat` in node 4 | connections closed unanswered, no heartbeats |
//! | corruption | a payload byte flipped in every shard of two files on m=2 nodes | one file is read (reads fall back to parity; nodes log each detection); then `sohofs scrub --now` twice |
//!
//! It prints a table, writes `faults.json` and draws `faults.png` in the
//! output folder.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sohofs_storage::fault;
use sohofs_storage::volume::{Ino, Volume, ROOT_INO};
use sohofs_storage::FsError;
use tokio::process::{Child, Command};

use crate::config::{ClusterConfig, NodeSection, CONFIG_FILE};
use crate::up::{self, UpArgs};

#[derive(Subcommand)]
pub enum BenchVerb {
    /// Measure a 6-node 4+2 cluster of its own under injected faults.
    Faults(FaultsArgs),
}

#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// A TOML file of settings (`mib`, `dir`, `out`, `rebuild_timeout_s`);
    /// flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MiB written by the healthy write (other scenarios write fractions).
    #[arg(long)]
    mib: Option<u64>,
    /// Scratch folder for the cluster (default: a new folder under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where faults.json and faults.png go (default: the current folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the scratch folder afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsConfig {
    mib: Option<u64>,
    dir: Option<PathBuf>,
    out: Option<PathBuf>,
    rebuild_timeout_s: Option<u64>,
}

const NODES: u32 = 6;
/// Seconds of silence before meta rebuilds a node's shards elsewhere: short,
/// so that the rebuild starts within the benchmark. Nodes are shown down
/// after 5 s anyway (`NODE_DOWN_AFTER_DEFAULT`), and with six hosts for six
/// shards a stripe a lost node's shards have nowhere else to go, so it
/// changes no row but the rebuild (which adds a seventh host).
const GRACE_PERIOD_S: u64 = 5;
/// The rebuild bandwidth limit (0: none), to time the rebuild itself.
const REBUILD_BYTES_PER_S: u64 = 0;
const K: u8 = 4;
const M: u8 = 2;
const MIB_DEFAULT: u64 = 256;
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks written between two fsyncs in the SIGKILL scenario.
const FSYNC_EVERY_BLOCKS: u64 = 4;
const REBUILD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// How long nodes get to register, or to be seen down.
const NODE_STATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Nodes whose data folder is a tmpfs that the disk-full scenario fills.
const TMPFS_NODES: [u64; 2] = [5, 6];
const KILLED_FOR_READS: [u64; 2] = [1, 2];
const KILLED_DURING_WRITES: u64 = 3;
const CUT_OFF: u64 = 4;
const CORRUPTED_NODES: [u64; 2] = [1, 2];
/// The node the rebuild row kills, and the spare it starts for its shards.
const REBUILT_NODE: u64 = 3;
const SPARE_NODE: u64 = 7;
/// Where the rebuild row, run last, goes in the table: after the reads,
/// where the issue lists it.
const REBUILD_ROW: usize = 4;
/// How often the rebuild row asks `sohofs status --json`.
const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(250);
const CHART_FILE: &str = "faults.png";
const JSON_FILE: &str = "faults.json";

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    /// MB/s (10^6 bytes) where the scenario moves data.
    mb_per_s: Option<f64>,
    seconds: Option<f64>,
    /// Whether everything read back was byte-exact and the fault was handled
    /// as promised; `None` when the scenario did not run.
    ok: Option<bool>,
    detail: String,
}

impl Row {
    fn new(scenario: &str) -> Row {
        Row {
            scenario: scenario.into(),
            mb_per_s: None,
            seconds: None,
            ok: None,
            detail: String::new(),
        }
    }
}

#[derive(Serialize)]
struct Report {
    nodes: u32,
    k: u8,
    m: u8,
    mib: u64,
    client: &'static str,
    grace_period_s: u64,
    /// 0: no limit.
    rebuild_bytes_per_s: u64,
    rebuild_method: &'static str,
    disk_full_method: &'static str,
    network_cut_method: &'static str,
    scrub_method: &'static str,
    rows: Vec<Row>,
}

pub async fn run(verb: BenchVerb) -> Result<()> {
    let BenchVerb::Faults(args) = verb;
    let settings: FaultsConfig = match &args.config {
        Some(path) => {
            toml::from_str(&std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?)
                .with_context(|| format!("parse {}", path.display()))?
        }
        None => FaultsConfig::default(),
    };
    let mib = args.mib.or(settings.mib).unwrap_or(MIB_DEFAULT).max(16);
    let out = args.out.or(settings.out).unwrap_or_else(|| PathBuf::from("."));
    let rebuild_timeout = settings
        .rebuild_timeout_s
        .map(Duration::from_secs)
        .unwrap_or(REBUILD_TIMEOUT_DEFAULT);
    let dir = match args.dir.or(settings.dir) {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("sohofs-bench-faults-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("--dir {} is not empty", dir.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let mut cluster = BenchCluster::prepare(&dir, mib)?;
    let outcome = tokio::select! {
        outcome = async {
            cluster.start().await?;
            scenarios(&mut cluster, mib, rebuild_timeout).await
        } => outcome,
        _ = up::terminated() => Err(anyhow::anyhow!("interrupted")),
    };
    cluster.stop().await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rows = outcome?;
    let report = Report {
        nodes: NODES,
        k: K,
        m: M,
        mib,
        client: "in-process volume API (no FUSE)",
        grace_period_s: GRACE_PERIOD_S,
        rebuild_bytes_per_s: REBUILD_BYTES_PER_S,
        rebuild_method: "node 3 SIGKILLed; once status --json shows it lost, a spare 7th node (host local-7) is \
                         started, as there is no free host among six for width 6; run after every other row; \
                         timed from the loss seen to zero degraded chunks",
        disk_full_method: "tmpfs data folders on nodes 5 and 6, filled with a file until ENOSPC",
        network_cut_method: "failpoints rpc.serve and node.heartbeat armed in node 4 through SOHOFS_FAILPOINTS_FILE: \
                             every connection closed unanswered, no heartbeats",
        scrub_method: "`sohofs scrub --now --json` run twice after one of the two corrupted files was read",
        rows,
    };
    print_table(&report);
    let json_path = out.join(JSON_FILE);
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", json_path.display()))?;
    let chart_path = out.join(CHART_FILE);
    draw_chart(&report.rows, &chart_path)?;
    println!("wrote {} and {}", json_path.display(), chart_path.display());
    if report.rows.iter().any(|r| r.ok == Some(false)) {
        bail!("a scenario failed its check (see the table)");
    }
    Ok(())
}

/// Deterministic contents: block `index` of the file with `seed`.
fn block(seed: u64, index: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK_BYTES];
    rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index).fill_bytes(&mut bytes);
    bytes
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// A file the benchmark wrote: what it should read as.
#[derive(Clone, Copy)]
struct Written {
    ino: Ino,
    seed: u64,
    blocks: u64,
}

async fn create(volume: &Volume, name: &str) -> Result<Ino> {
    Ok(volume.create(ROOT_INO, name.as_bytes(), 0o644, 0, 0).await?.ino)
}

/// Writes `blocks` MiB sequentially and fsyncs; returns the file and the time.
async fn write_file(volume: &Volume, name: &str, seed: u64, blocks: u64) -> Result<(Written, Duration), FsError> {
    let ino = volume.create(ROOT_INO, name.as_bytes(), 0o644, 0, 0).await?.ino;
    let started = Instant::now();
    let written = async {
        for index in 0..blocks {
            let data = block(seed, index);
            volume.write(ino, index * BLOCK_BYTES as u64, &data).await?;
        }
        volume.fsync(ino).await
    }
    .await;
    let elapsed = started.elapsed();
    let _ = volume.release(ino).await;
    written.map(|()| (Written { ino, seed, blocks }, elapsed))
}

/// Reads a file back in 1 MiB reads; returns whether every byte matched.
async fn read_file(volume: &Volume, file: Written) -> Result<(bool, Duration), FsError> {
    volume.open(file.ino).await?;
    let started = Instant::now();
    let checked = async {
        let mut exact = volume.getattr(file.ino).await?.size == file.blocks * BLOCK_BYTES as u64;
        for index in 0..file.blocks {
            let got = volume
                .read(file.ino, index * BLOCK_BYTES as u64, BLOCK_BYTES as u32)
                .await?;
            exact &= got == block(file.seed, index);
        }
        Ok(exact)
    }
    .await;
    let elapsed = started.elapsed();
    let _ = volume.release(file.ino).await;
    checked.map(|exact| (exact, elapsed))
}

/// Reads every file with a fresh client; true when all are byte-exact.
async fn all_intact(cluster: &BenchCluster, files: &[Written]) -> Result<bool> {
    let volume = cluster.client().await?;
    for file in files {
        match read_file(&volume, *file).await {
            Ok((true, _)) => {}
            Ok((false, _)) | Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

async fn scenarios(cluster: &mut BenchCluster, mib: u64, rebuild_timeout: Duration) -> Result<Vec<Row>> {
    let progress = ProgressBar::new(10);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut rows = Vec::new();
    let step = |row: &Row, rows: &mut Vec<Row>| {
        progress.println(format!("{}: {}", row.scenario, row.detail));
        progress.inc(1);
        rows.push(row.clone());
    };
    let bytes = mib * BLOCK_BYTES as u64;

    progress.set_message("healthy write");
    let client = cluster.client().await?;
    let (main, elapsed) = write_file(&client, "healthy.bin", 1, mib)
        .await
        .context("healthy write")?;
    let mut row = Row::new("healthy sequential write");
    row.mb_per_s = Some(mb_per_s(bytes, elapsed));
    row.seconds = Some(elapsed.as_secs_f64());
    row.ok = Some(true);
    row.detail = format!("{mib} MiB in 1 MiB writes, fsync counted");
    step(&row, &mut rows);
    let mut files = vec![main];

    for (down, label) in [
        (0usize, "healthy sequential read"),
        (1, "read, 1 node killed"),
        (2, "read, 2 nodes killed"),
    ] {
        progress.set_message(label);
        if down > 0 {
            cluster.kill_node(KILLED_FOR_READS[down - 1]).await?;
        }
        let mut row = Row::new(label);
        match read_file(&cluster.client().await?, main).await {
            Ok((exact, elapsed)) => {
                row.mb_per_s = Some(mb_per_s(bytes, elapsed));
                row.seconds = Some(elapsed.as_secs_f64());
                row.ok = Some(exact);
                row.detail = if exact { "byte-exact" } else { "WRONG BYTES" }.into();
            }
            Err(error) => {
                row.ok = Some(false);
                row.detail = format!("read failed: {error}");
            }
        }
        step(&row, &mut rows);
    }
    progress.set_message("restarting the killed nodes");
    for id in KILLED_FOR_READS {
        cluster.start_node(id).await?;
    }
    cluster.wait_nodes(NODES as usize).await?;

    progress.set_message("SIGKILL of a node during writes");
    let (row, file) = kill_during_writes(cluster, mib / 2).await?;
    files.extend(file);
    step(&row, &mut rows);
    cluster.start_node(KILLED_DURING_WRITES).await?;
    cluster.wait_nodes(NODES as usize).await?;

    progress.set_message("one node's disk full");
    let (full_rows, written) = disk_full(cluster, mib / 4, &files).await?;
    files.extend(written);
    for row in &full_rows {
        step(row, &mut rows);
    }

    progress.set_message("one node cut off from the network");
    let (row, written) = network_cut(cluster, mib / 4, &files).await?;
    files.extend(written);
    step(&row, &mut rows);

    progress.set_message("corrupt shards on m nodes, scrub");
    // Background repairs of the stripes written degraded above would touch
    // the shards this row picks out; let them finish (the row's own checks
    // judge the outcome either way).
    cluster.settle(rebuild_timeout).await?;
    let (row, written) = corruption(cluster, mib / 4).await?;
    files.extend(written);
    step(&row, &mut rows);

    // Last, because its spare node 7 would change every row after it.
    progress.set_message("rebuild of a killed node onto a spare");
    let row = rebuild(cluster, rebuild_timeout, &files).await?;
    step(&row, &mut rows);
    let last = rows.pop().expect("the rebuild row was just pushed");
    rows.insert(REBUILD_ROW.min(rows.len()), last);
    progress.finish_and_clear();
    Ok(rows)
}

/// Kills node 3, starts a spare node 7 once meta shows node 3 lost (with
/// six hosts and six shards per stripe there is no other host to rebuild
/// on), and times the cluster's own rebuild to zero degraded chunks. Then
/// reads every file with node 3 down, and again with nodes 1 and 2 killed
/// too, so that every stripe needs its shard on node 7.
async fn rebuild(cluster: &mut BenchCluster, timeout: Duration, files: &[Written]) -> Result<Row> {
    let mut row = Row::new("rebuild of a killed node");
    let Some(settled) = cluster.settle(timeout).await? else {
        row.ok = Some(false);
        row.detail = format!("not run: degraded chunks left from earlier rows after {timeout:?}");
        return Ok(row);
    };
    let (victim_shards, victim_bytes) = cluster.shard_bytes(REBUILT_NODE);
    cluster.kill_node(REBUILT_NODE).await?;
    let killed = Instant::now();
    let lost_after = loop {
        let status = cluster.status_json().await?;
        let lost = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"] == REBUILT_NODE))
            .is_some_and(|n| n["lost"] == true);
        if lost {
            break killed.elapsed();
        }
        if killed.elapsed() > timeout {
            row.ok = Some(false);
            row.detail = format!("node {REBUILT_NODE} not shown lost {timeout:?} after the kill");
            return Ok(row);
        }
        tokio::time::sleep(STATUS_POLL_INTERVAL).await;
    };
    cluster.add_spare_node(SPARE_NODE).await?;
    let spare_up_after = killed.elapsed();
    let done_after = loop {
        tokio::time::sleep(STATUS_POLL_INTERVAL).await;
        let status = cluster.status_json().await?;
        let volume = &status["volume"];
        if volume["chunks_degraded"].as_u64() == Some(0) && volume["rebuild"]["chunks_left"].as_u64() == Some(0) {
            break killed.elapsed();
        }
        if killed.elapsed() > timeout {
            row.ok = Some(false);
            row.detail = format!("not done {timeout:?} after the kill: {volume}");
            return Ok(row);
        }
    };
    // Taken at once: rebalancing toward node 7 may start with the next
    // repair pass, 2 s after the last one.
    let (spare_shards, spare_bytes) = cluster.shard_bytes(SPARE_NODE);
    let rebuilding = done_after - lost_after;
    let one_down = all_intact(cluster, files).await?;
    for id in KILLED_FOR_READS {
        cluster.kill_node(id).await?;
    }
    let three_down = all_intact(cluster, files).await?;
    row.seconds = Some(rebuilding.as_secs_f64());
    row.mb_per_s = Some(mb_per_s(spare_bytes, rebuilding));
    row.ok = Some(one_down && three_down && spare_shards > 0);
    let mib_of = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    row.detail = format!(
        "node {REBUILT_NODE} ({victim_shards} shard files, {:.1} MiB) SIGKILLed; shown lost {:.1} s later (grace \
         period {GRACE_PERIOD_S} s); then a spare node {SPARE_NODE} started (up at {:.1} s); {spare_shards} shards \
         ({:.1} MiB) rebuilt onto it, zero degraded chunks {:.1} s after the loss was seen, {:.1} s after the kill \
         (MB/s and s: from the loss seen to zero degraded; rebuild bandwidth unlimited); every file {} with node \
         {REBUILT_NODE} down, {} with nodes 1 and 2 killed too (nodes 4-7 only); waited {:.1} s before the kill for \
         zero degraded chunks",
        mib_of(victim_bytes),
        lost_after.as_secs_f64(),
        spare_up_after.as_secs_f64(),
        mib_of(spare_bytes),
        rebuilding.as_secs_f64(),
        done_after.as_secs_f64(),
        if one_down { "byte-exact" } else { "NOT INTACT" },
        if three_down { "byte-exact" } else { "NOT INTACT" },
        settled.as_secs_f64(),
    );
    Ok(row)
}

/// SIGKILLs a node halfway through a write with an fsync every 4 MiB.
async fn kill_during_writes(cluster: &mut BenchCluster, blocks: u64) -> Result<(Row, Option<Written>)> {
    let mut row = Row::new("node SIGKILLed during writes");
    let volume = cluster.client().await?;
    let seed = 2;
    let ino = create(&volume, "killed-during-write.bin").await?;
    let started = Instant::now();
    let mut acknowledged = 0u64;
    let mut failure = None;
    for index in 0..blocks {
        if index == blocks / 2 {
            cluster.kill_node(KILLED_DURING_WRITES).await?;
        }
        if let Err(error) = volume.write(ino, index * BLOCK_BYTES as u64, &block(seed, index)).await {
            failure = Some(error);
            break;
        }
        if (index + 1) % FSYNC_EVERY_BLOCKS == 0 || index + 1 == blocks {
            match volume.fsync(ino).await {
                Ok(()) => acknowledged = index + 1,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = volume.release(ino).await;
    let acked = Written {
        ino,
        seed,
        blocks: acknowledged,
    };
    // Only the acknowledged prefix is promised; the file may be longer.
    let fresh = cluster.client().await?;
    let mut intact = true;
    for index in 0..acknowledged {
        let got = fresh.read(ino, index * BLOCK_BYTES as u64, BLOCK_BYTES as u32).await;
        intact &= got.as_deref().ok() == Some(&block(seed, index)[..]);
    }
    row.mb_per_s = Some(mb_per_s(acknowledged * BLOCK_BYTES as u64, elapsed));
    row.seconds = Some(elapsed.as_secs_f64());
    row.ok = Some(intact && failure.is_none());
    row.detail = format!(
        "node {KILLED_DURING_WRITES} killed after {} of {blocks} MiB; {acknowledged} MiB fsynced and {}{}",
        blocks / 2,
        if intact { "all intact" } else { "NOT INTACT" },
        match &failure {
            Some(error) => format!("; the write failed: {error}"),
            None => "; writes went on".into(),
        }
    );
    Ok((row, (acknowledged == blocks).then_some(acked)))
}

/// Fills node 5's disk, then node 6's.
async fn disk_full(cluster: &mut BenchCluster, blocks: u64, earlier: &[Written]) -> Result<(Vec<Row>, Vec<Written>)> {
    let mut row = Row::new("write, one node's disk full");
    let mut enospc = Row::new("write, two nodes' disks full");
    if !cluster.tmpfs_ok {
        row.detail = "not run: tmpfs could not be mounted (needs root)".into();
        enospc.detail = row.detail.clone();
        return Ok((vec![row, enospc], Vec::new()));
    }
    let mut written = Vec::new();
    let first = TMPFS_NODES[0];
    let shards_before = cluster.shard_files(first);
    fill(&cluster.node_data(first))?;
    let volume = cluster.client().await?;
    match write_file(&volume, "one-disk-full.bin", 3, blocks).await {
        Ok((file, elapsed)) => {
            let new_shards = cluster.shard_files(first).saturating_sub(shards_before);
            let exact = all_intact(cluster, &[file]).await?;
            row.mb_per_s = Some(mb_per_s(blocks * BLOCK_BYTES as u64, elapsed));
            row.seconds = Some(elapsed.as_secs_f64());
            row.ok = Some(exact && new_shards == 0);
            row.detail = format!(
                "no ENOSPC; {new_shards} new shards on the full node {first}, stripes written on the other five \
                 (degraded: no spare host with 6 nodes); read back {}",
                if exact { "byte-exact" } else { "WRONG" }
            );
            written.push(file);
        }
        Err(error) => {
            row.ok = Some(false);
            row.detail = format!("the write failed although five nodes had space: {error}");
        }
    }
    fill(&cluster.node_data(TMPFS_NODES[1]))?;
    let result = write_file(&cluster.client().await?, "two-disks-full.bin", 4, blocks).await;
    for id in TMPFS_NODES {
        std::fs::remove_file(cluster.node_data(id).join(FILLER_FILE)).context("remove a filler file")?;
    }
    let after = write_file(&cluster.client().await?, "after-disk-full.bin", 5, blocks).await;
    let mut all: Vec<Written> = earlier.to_vec();
    all.extend(&written);
    if let Ok((file, _)) = &after {
        all.push(*file);
    }
    let nothing_lost = all_intact(cluster, &all).await?;
    enospc.ok = Some(matches!(result, Err(FsError::NoSpace(_))) && after.is_ok() && nothing_lost);
    enospc.detail = format!(
        "{} with 4 hosts left (quorum 5); after freeing space writes {}; every earlier file {}",
        match &result {
            Err(FsError::NoSpace(_)) => "ENOSPC".to_string(),
            Err(error) => format!("failed, but not with ENOSPC: {error}"),
            Ok(_) => "NO ENOSPC (unexpected)".into(),
        },
        if after.is_ok() { "go on" } else { "FAIL" },
        if nothing_lost { "byte-exact" } else { "NOT INTACT" }
    );
    if let Ok((file, _)) = after {
        written.push(file);
    }
    Ok((vec![row, enospc], written))
}

const FILLER_FILE: &str = "filler";

/// Fills the file system of `dir` with one file until ENOSPC.
fn fill(dir: &Path) -> Result<()> {
    let mut file = std::fs::File::create(dir.join(FILLER_FILE)).context("create a filler file")?;
    for size in [4 << 20, 64 << 10, 4 << 10, 512] {
        let buffer = vec![0xa5u8; size];
        loop {
            match file.write_all(&buffer) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => return Err(error).context("fill the disk"),
            }
        }
    }
    Ok(())
}

/// Cuts node 4 off: it closes every connection unanswered and stops its
/// heartbeats, through failpoints armed while it runs.
async fn network_cut(cluster: &mut BenchCluster, blocks: u64, earlier: &[Written]) -> Result<(Row, Vec<Written>)> {
    let mut row = Row::new("write, one node cut off");
    let specs = format!(
        "{}@node-{CUT_OFF}=error\n{}@node-{CUT_OFF}=error\n",
        fault::RPC_SERVE,
        fault::NODE_HEARTBEAT
    );
    std::fs::write(&cluster.failpoints_file, specs).context("arm the failpoints")?;
    let started = Instant::now();
    let seen_down = cluster.wait_nodes(NODES as usize - 1).await;
    let down_after = started.elapsed();
    let volume = cluster.client().await?;
    let outcome = write_file(&volume, "cut-off.bin", 6, blocks).await;
    let mut written = Vec::new();
    let mut all: Vec<Written> = earlier.to_vec();
    if let Ok((file, _)) = &outcome {
        all.push(*file);
        written.push(*file);
    }
    let nothing_lost = all_intact(cluster, &all).await?;
    std::fs::write(&cluster.failpoints_file, "").context("disarm the failpoints")?;
    cluster.wait_nodes(NODES as usize).await?;
    match outcome {
        Ok((_, elapsed)) => {
            row.mb_per_s = Some(mb_per_s(blocks * BLOCK_BYTES as u64, elapsed));
            row.seconds = Some(elapsed.as_secs_f64());
            row.ok = Some(seen_down.is_ok() && nothing_lost);
            row.detail = format!(
                "node {CUT_OFF} shown down {:.1} s after the cut; writes went on; every file (this one and all \
                 earlier) {}",
                down_after.as_secs_f64(),
                if nothing_lost { "byte-exact" } else { "NOT INTACT" }
            );
        }
        Err(error) => {
            row.ok = Some(false);
            row.detail = format!("the write failed: {error}");
        }
    }
    Ok((row, written))
}

/// Flips a payload byte in every shard of `file` on the m corrupted nodes
/// (the shards in `new`, the node's shard files the file's write added);
/// returns each corrupted file with the offset and value of its flipped byte.
fn corrupt(new: &BTreeMap<u64, Vec<PathBuf>>) -> Result<Vec<Flipped>> {
    let mut corrupted = Vec::new();
    for id in CORRUPTED_NODES {
        for path in new.get(&id).into_iter().flatten() {
            let mut bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            let at = sohofs_format::SHARD_HEADER_BYTES + (bytes.len() - sohofs_format::SHARD_HEADER_BYTES) / 2;
            if at < bytes.len() {
                bytes[at] ^= 0x40;
                std::fs::write(path, &bytes).with_context(|| format!("write {}", path.display()))?;
                corrupted.push(Flipped {
                    path: path.clone(),
                    at,
                    value: bytes[at],
                });
            }
        }
    }
    Ok(corrupted)
}

/// A byte the benchmark flipped in a shard file.
#[derive(Clone)]
struct Flipped {
    path: PathBuf,
    at: usize,
    value: u8,
}

/// How many of the corrupted shard files still hold their flipped byte (a
/// repair rewrites the shard in place).
fn still_corrupt(corrupted: &[Flipped]) -> usize {
    corrupted
        .iter()
        .filter(|f| std::fs::read(&f.path).is_ok_and(|bytes| bytes.get(f.at) == Some(&f.value)))
        .count()
}

/// Writes a file and returns it with the shard files its write added on
/// each corrupted node.
async fn write_tracked(
    cluster: &BenchCluster,
    name: &str,
    seed: u64,
    blocks: u64,
) -> Result<(Written, BTreeMap<u64, Vec<PathBuf>>)> {
    let before: BTreeMap<u64, std::collections::BTreeSet<PathBuf>> = CORRUPTED_NODES
        .iter()
        .map(|id| (*id, cluster.shard_paths(*id).into_iter().collect()))
        .collect();
    let (file, _) = write_file(&cluster.client().await?, name, seed, blocks)
        .await
        .with_context(|| format!("write {name}"))?;
    let new = CORRUPTED_NODES
        .iter()
        .map(|id| {
            let paths = cluster
                .shard_paths(*id)
                .into_iter()
                .filter(|path| !before[id].contains(path))
                .collect();
            (*id, paths)
        })
        .collect();
    Ok((file, new))
}

/// Flips a payload byte of every shard of two new files on m nodes; reads
/// the first with a fresh client (reads detect what they fetch), then runs
/// `sohofs scrub --now` twice: the first must find and repair every shard
/// still corrupt (all of the second file's), the second must find none.
async fn corruption(cluster: &mut BenchCluster, blocks: u64) -> Result<(Row, Vec<Written>)> {
    let mut row = Row::new("corrupt shards on m=2 nodes per stripe");
    let (read_first, read_shards) = write_tracked(cluster, "corrupted-read.bin", 7, blocks).await?;
    let (scrub_file, scrub_shards) = write_tracked(cluster, "corrupted-scrub.bin", 8, blocks).await?;
    let logged_before: usize = CORRUPTED_NODES.iter().map(|id| cluster.hash_failures_logged(*id)).sum();
    let corrupted_read = corrupt(&read_shards)?;
    let corrupted_scrub = corrupt(&scrub_shards)?;
    let volume = cluster.client().await?;
    let outcome = read_file(&volume, read_first).await;
    // Nodes log each shard that fails its hash when read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let detected = CORRUPTED_NODES
        .iter()
        .map(|id| cluster.hash_failures_logged(*id))
        .sum::<usize>()
        - logged_before;
    let (exact, elapsed) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            row.ok = Some(false);
            row.detail = format!(
                "{} shards corrupted; the read failed: {error}",
                corrupted_read.len() + corrupted_scrub.len()
            );
            return Ok((row, Vec::new()));
        }
    };
    let all: Vec<Flipped> = corrupted_read.iter().chain(&corrupted_scrub).cloned().collect();
    let left_before_scrub = still_corrupt(&all);
    let started = Instant::now();
    let first = cluster.scrub().await?;
    let scrub_time = started.elapsed();
    let second = cluster.scrub().await?;
    let left_after = still_corrupt(&all);
    let reread = all_intact(cluster, &[read_first, scrub_file]).await?;
    let count = |report: &serde_json::Value, field: &str| report[field].as_u64().unwrap_or(u64::MAX);
    let (found, repaired, unreferenced) = (
        count(&first, "shards_corrupt"),
        count(&first, "shards_repaired"),
        count(&first, "shards_unreferenced"),
    );
    row.mb_per_s = Some(mb_per_s(blocks * BLOCK_BYTES as u64, elapsed));
    row.seconds = Some(elapsed.as_secs_f64());
    row.ok = Some(
        exact
            && detected > 0
            && found >= corrupted_scrub.len() as u64
            && repaired + unreferenced == found
            && count(&second, "shards_corrupt") == 0
            && left_after == 0
            && reread,
    );
    row.detail = format!(
        "{} + {} shards corrupted in two {blocks} MiB files; reading the first: data {}, {detected} bad shards \
         reported by the nodes (MB/s and s: this read); {left_before_scrub} of the {} still corrupt on disk when \
         the scrub started; `scrub --now`: {} shards checked, \
         {found} corrupt, {repaired} repaired, {unreferenced} unreferenced, in {:.1} s; second scrub: {} corrupt; \
         {left_after} corrupted shard files left; both files then read {}",
        corrupted_read.len(),
        corrupted_scrub.len(),
        if exact { "byte-exact" } else { "WRONG" },
        all.len(),
        count(&first, "shards_checked"),
        scrub_time.as_secs_f64(),
        count(&second, "shards_corrupt"),
        if reread { "byte-exact" } else { "NOT INTACT" },
    );
    Ok((row, vec![read_first, scrub_file]))
}

fn print_table(report: &Report) {
    println!(
        "\nfault-injection benchmark: {} nodes, {}+{}, {} MiB, client: {}",
        report.nodes, report.k, report.m, report.mib, report.client
    );
    println!("| # | scenario | MB/s | s | ok | detail |");
    println!("|---|---|---|---|---|---|");
    for (index, row) in report.rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            index + 1,
            row.scenario,
            row.mb_per_s.map_or("–".into(), |v| format!("{v:.1}")),
            row.seconds.map_or("–".into(), |v| format!("{v:.1}")),
            match row.ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "–",
            },
            row.detail
        );
    }
}

/// The chart's font: Debian's DejaVu Sans (fonts-dejavu-core), read at run
/// time so that no font is built into the binary. Without it the chart is
/// drawn without text.
const CHART_FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const CHART_FONT: &str = "sans-serif";

/// Registers [`CHART_FONT_FILE`] once; whether text can be drawn.
fn chart_font_loaded() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let Ok(bytes) = std::fs::read(CHART_FONT_FILE) else {
            tracing::warn!("{CHART_FONT_FILE} is missing: the chart has no labels (apt-get install fonts-dejavu-core)");
            return false;
        };
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(CHART_FONT, plotters::style::FontStyle::Normal, bytes).is_ok()
    })
}

/// One bar per row with a speed, in table order, on a grid of 25 MB/s
/// steps; green when the row's check passed, red when not. Each bar is
/// labelled with its row number in the table and its MB/s.
fn draw_chart(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    const WIDTH: u32 = 900;
    const HEIGHT: u32 = 400;
    const MARGIN: i32 = 40;
    const GRID_MB_PER_S: f64 = 25.0;
    let top = rows.iter().filter_map(|r| r.mb_per_s).fold(GRID_MB_PER_S, f64::max);
    let scale = (HEIGHT as i32 - 2 * MARGIN) as f64 / (top * 1.05);
    let labels = chart_font_loaded();
    let area = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| anyhow::anyhow!("draw: {e}"))?;
    let base = HEIGHT as i32 - MARGIN;
    let mut grid = 0.0;
    while grid <= top * 1.05 {
        let y = base - (grid * scale) as i32;
        area.draw(&PathElement::new(
            vec![(MARGIN, y), (WIDTH as i32 - MARGIN, y)],
            RGBColor(220, 220, 220),
        ))
        .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
        grid += GRID_MB_PER_S;
    }
    let slots = rows.len().max(1) as i32;
    let slot = (WIDTH as i32 - 2 * MARGIN) / slots;
    for (index, row) in rows.iter().enumerate() {
        let Some(value) = row.mb_per_s else { continue };
        let left = MARGIN + index as i32 * slot + slot / 5;
        let right = MARGIN + (index as i32 + 1) * slot - slot / 5;
        let colour = match row.ok {
            Some(false) => RGBColor(200, 40, 40),
            _ => RGBColor(40, 140, 70),
        };
        let bar_top = base - (value * scale) as i32;
        area.draw(&Rectangle::new([(left, bar_top), (right, base)], colour.filled()))
            .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
        if labels {
            let font = (CHART_FONT, 13).into_font().color(&BLACK);
            area.draw(&Text::new(format!("{value:.0}"), (left, bar_top - 16), font.clone()))
                .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
            area.draw(&Text::new(format!("#{}", index + 1), (left, base + 6), font))
                .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
        }
    }
    if labels {
        let title =
            format!("sohofs bench faults: MB/s per scenario (#n = row n of the table; grid {GRID_MB_PER_S:.0} MB/s)");
        area.draw(&Text::new(
            title,
            (MARGIN, 10),
            (CHART_FONT, 15).into_font().color(&BLACK),
        ))
        .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
    }
    area.draw(&PathElement::new(
        vec![(MARGIN, base), (WIDTH as i32 - MARGIN, base)],
        BLACK,
    ))
    .map_err(|e| anyhow::anyhow!("draw: {e}"))?;
    area.present()
        .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

/// The benchmark's cluster: meta and nodes as child processes of this
/// binary, as `sohofs up` runs them, so that one node can be killed and
/// started again.
struct BenchCluster {
    dir: PathBuf,
    config: ClusterConfig,
    config_path: PathBuf,
    failpoints_file: PathBuf,
    meta: Option<Child>,
    nodes: BTreeMap<u64, Child>,
    tmpfs: Vec<PathBuf>,
    tmpfs_ok: bool,
}

impl BenchCluster {
    /// Makes the cluster's folder and `sohofs.toml` as `sohofs up
    /// --grace-period 5` would, without a rebuild bandwidth limit.
    fn configure(dir: &Path) -> Result<(PathBuf, ClusterConfig)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        let args = UpArgs {
            nodes: NODES,
            k: K,
            m: M,
            write_quorum: None,
            dir: dir.clone(),
            mount: dir.join("unused-mount"),
            grace_period: Some(GRACE_PERIOD_S),
            identity: None,
        };
        let mut config = up::prepare(&args, &dir)?;
        config.heal.rebuild_bytes_per_s = REBUILD_BYTES_PER_S;
        config.save(&dir.join(CONFIG_FILE))?;
        Ok((dir, config))
    }

    fn prepare(dir: &Path, mib: u64) -> Result<BenchCluster> {
        let (dir, config) = BenchCluster::configure(dir)?;
        let mut cluster = BenchCluster {
            config_path: dir.join(CONFIG_FILE),
            failpoints_file: dir.join("failpoints"),
            dir,
            config,
            meta: None,
            nodes: BTreeMap::new(),
            tmpfs: Vec::new(),
            tmpfs_ok: true,
        };
        std::fs::write(&cluster.failpoints_file, "")?;
        // Room for the node's share of everything the benchmark writes
        // (about 2.5 × mib over 4 data shards) and then some.
        let tmpfs_bytes = (mib + 64) << 20;
        for id in TMPFS_NODES {
            let data = cluster.node_data(id);
            let mounted = nix::mount::mount(
                Some("tmpfs"),
                &data,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(format!("size={tmpfs_bytes},mode=0700").as_str()),
            );
            match mounted {
                Ok(()) => cluster.tmpfs.push(data),
                Err(error) => {
                    tracing::warn!(%error, "cannot mount a tmpfs; the disk-full scenario will not run");
                    cluster.tmpfs_ok = false;
                }
            }
        }
        Ok(cluster)
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("nodes/{id}"))
    }

    fn node_data(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("data")
    }

    fn spawn(&self, args: &[String], log: &Path) -> Result<Child> {
        let exe = std::env::current_exe().context("find the sohofs executable")?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .env(fault::FAILPOINTS_FILE_ENV, &self.failpoints_file)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        command.spawn().with_context(|| format!("start {}", args.join(" ")))
    }

    async fn start(&mut self) -> Result<()> {
        let meta_addr = self.config.meta[0].clone();
        let log = self.dir.join("meta/meta.log");
        let mut meta = self.spawn(&up::meta_args(&self.config, &self.dir), &log)?;
        up::wait_for_port(&meta_addr, &mut meta, "meta", &log).await?;
        self.meta = Some(meta);
        for id in 1..=NODES as u64 {
            self.start_node(id).await?;
        }
        self.wait_nodes(NODES as usize).await
    }

    async fn start_node(&mut self, id: u64) -> Result<()> {
        let node = self
            .config
            .nodes
            .iter()
            .find(|n| n.id == id)
            .context("no such node")?
            .clone();
        let log = self.node_dir(id).join("node.log");
        let mut child = self.spawn(&up::node_args(&self.config, &self.dir, &node), &log)?;
        up::wait_for_port(&node.listen, &mut child, &format!("node {id}"), &log).await?;
        self.nodes.insert(id, child);
        Ok(())
    }

    /// Adds node `id` (host `local-<id>`) to the config, as `sohofs node
    /// add` does, starts it and waits until meta shows it up.
    async fn add_spare_node(&mut self, id: u64) -> Result<()> {
        let section = NodeSection {
            id,
            listen: format!("127.0.0.1:{}", up::free_port()?),
            dir: format!("nodes/{id}"),
            host: format!("local-{id}"),
        };
        std::fs::create_dir_all(self.node_data(id))
            .with_context(|| format!("create {}", self.node_data(id).display()))?;
        self.config.nodes.push(section);
        self.config.save(&self.config_path)?;
        let up_before = self.client().await?.nodes().await?.iter().filter(|n| n.up).count();
        self.start_node(id).await?;
        self.wait_nodes(up_before + 1).await
    }

    async fn kill_node(&mut self, id: u64) -> Result<()> {
        let mut child = self.nodes.remove(&id).context("node is not running")?;
        child.start_kill().context("SIGKILL a node")?;
        child.wait().await?;
        Ok(())
    }

    async fn client(&self) -> Result<Volume> {
        let volume = crate::mount::connect(&self.config, &self.config_path, None).await?;
        volume.refresh_nodes().await?;
        Ok(volume)
    }

    /// Waits until meta shows exactly `count` nodes up.
    async fn wait_nodes(&self, count: usize) -> Result<()> {
        let volume = self.client().await?;
        let deadline = Instant::now() + NODE_STATE_TIMEOUT;
        loop {
            let up = volume.nodes().await?.iter().filter(|n| n.up).count();
            if up == count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{up} nodes up, waited for {count}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status_json(&self) -> Result<serde_json::Value> {
        let output = Command::new(std::env::current_exe()?)
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .await
            .context("run sohofs status")?;
        if !output.status.success() {
            bail!("sohofs status failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn shard_paths(&self, id: u64) -> Vec<PathBuf> {
        let Ok(buckets) = std::fs::read_dir(self.node_data(id).join("shards")) else {
            return Vec::new();
        };
        buckets
            .flatten()
            .filter_map(|bucket| std::fs::read_dir(bucket.path()).ok())
            .flat_map(|files| files.flatten().map(|f| f.path()))
            .filter(|path| !path.to_string_lossy().ends_with(".tmp"))
            .collect()
    }

    fn shard_files(&self, id: u64) -> usize {
        self.shard_paths(id).len()
    }

    /// Shard files of a node and their bytes, as on its disk.
    fn shard_bytes(&self, id: u64) -> (usize, u64) {
        let paths = self.shard_paths(id);
        let bytes = paths
            .iter()
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        (paths.len(), bytes)
    }

    /// Waits until `sohofs status --json` shows no degraded chunk and
    /// nothing left to rebuild; `None` after `timeout`.
    async fn settle(&self, timeout: Duration) -> Result<Option<Duration>> {
        let started = Instant::now();
        loop {
            let status = self.status_json().await?;
            let volume = &status["volume"];
            if volume["chunks_degraded"].as_u64() == Some(0) && volume["rebuild"]["chunks_left"].as_u64() == Some(0) {
                return Ok(Some(started.elapsed()));
            }
            if started.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(STATUS_POLL_INTERVAL).await;
        }
    }

    /// Runs `sohofs scrub --now --json`; its report. (The command exits 1
    /// when corrupt shards are left unrepaired; the report says how many.)
    async fn scrub(&self) -> Result<serde_json::Value> {
        let output = Command::new(std::env::current_exe()?)
            .args(["scrub", "--now", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .await
            .context("run sohofs scrub")?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "sohofs scrub printed no report: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Shards the node has reported failing their hash, from its log.
    fn hash_failures_logged(&self, id: u64) -> usize {
        std::fs::read_to_string(self.node_dir(id).join("node.log"))
            .map(|log| log.lines().filter(|l| l.contains("fails its hash")).count())
            .unwrap_or(0)
    }

    async fn stop(&mut self) {
        let mut children: Vec<Child> = std::mem::take(&mut self.nodes).into_values().collect();
        children.extend(self.meta.take());
        for child in &children {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for mut child in children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        for path in self.tmpfs.drain(..) {
            if let Err(error) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(%error, path = %path.display(), "cannot unmount a tmpfs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_a_png_also_with_rows_that_did_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHART_FILE);
        let mut rows = vec![Row::new("healthy"), Row::new("not run"), Row::new("failed")];
        rows[0].mb_per_s = Some(120.0);
        rows[0].ok = Some(true);
        rows[2].mb_per_s = Some(30.0);
        rows[2].ok = Some(false);
        draw_chart(&rows, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn the_cluster_runs_with_a_short_grace_period_and_no_rebuild_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (dir, config) = BenchCluster::configure(&dir.path().join("cluster")).unwrap();
        let args = up::meta_args(&config, &dir);
        let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(value("--grace-period"), Some(GRACE_PERIOD_S.to_string()));
        assert_eq!(value("--rebuild-bytes-per-s"), Some("0".to_string()));
        // What meta is given is what the config on disk says.
        let saved = ClusterConfig::load(&dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(saved.heal.grace_period_s, GRACE_PERIOD_S);
        assert_eq!(saved.heal.rebuild_bytes_per_s, REBUILD_BYTES_PER_S);
    }

    #[test]
    fn blocks_are_deterministic_and_differ() {
        assert_eq!(block(1, 0), block(1, 0));
        assert_ne!(block(1, 0), block(1, 1));
        assert_ne!(block(1, 0), block(2, 0));
        assert_eq!(block(1, 0).len(), BLOCK_BYTES);
    }
}
