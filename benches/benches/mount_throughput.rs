//! Sequential throughput through a mounted sohofs volume, next to the plain
//! disk of the same machine, in one run.
//!
//! Starts `sohofs up --nodes 6 --k 4 --m 2` in a temporary folder, waits for
//! the mount, writes `SOHOFS_BENCH_MIB` MiB (default 1024) in 1 MiB writes and
//! an fsync (counted), drops the page cache (root only), re-opens the file and
//! reads it back in 1 MiB reads, checking every byte against what was written.
//! Then the cluster is stopped and the same is done in a folder on the same
//! filesystem. Between the two, `sohofs nfs serve` is started on the same
//! cluster and the same amount goes in and out through it with libnfs's
//! `nfs-cp` (the source file on the plain disk is made untimed; what comes
//! back, and the file as the FUSE mount sees it, are checked byte by byte).
//! Prints a table and writes it as JSON to
//! `<target dir>/bench-results/mount_throughput.json`.
//!
//! Run: `cargo bench -p sohofs-benches --bench mount_throughput`. The sohofs
//! binary is `SOHOFS_BIN`, else `<target dir>/debug/sohofs`, else
//! `<target dir>/release/sohofs`; build it first.
//!
//! The cluster is always stopped: on return and on panic (drop: SIGTERM to
//! `up`, SIGKILL of its process group after a timeout, `fusermount3 -uz`), on
//! SIGINT/SIGTERM of this process (the run winds down, then the same), if this
//! process is killed (`up` gets SIGTERM through PR_SET_PDEATHSIG), and if the
//! mount hangs (a watchdog kills the cluster after `SOHOFS_BENCH_TIMEOUT_S`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{self, SigSet, Signal};
use nix::unistd::Pid;
use rand::RngCore;

/// Bytes per `write`/`read` call, as `dd bs=1M`.
const BLOCK_BYTES: usize = 1024 * 1024;
const MIB_DEFAULT: u64 = 1024;
/// Distinct random blocks the file is made of; each 4 KiB page of a block is
/// stamped with the block's index, so every page of the file is unique and a
/// page read from the wrong place is caught.
const POOL_BLOCKS: usize = 64;
const PAGE_BYTES: usize = 4096;
const NODES: u32 = 6;
const DATA_SHARDS: u32 = 4;
const PARITY_SHARDS: u32 = 2;
/// How long `up` may take to print `mounted at`.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait after `mounted at` before writing: twice the client's node refresh
/// interval (`volume::NODE_REFRESH_INTERVAL`, 1 s); see `Cluster::start`.
const MOUNT_SETTLE: Duration = Duration::from_secs(2);
/// How long `up` gets after SIGTERM; it gives its own children 10 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the run gets to wind down after SIGINT/SIGTERM before the
/// watchdog kills the cluster under it.
const SIGNAL_GRACE: Duration = Duration::from_secs(20);
/// Default bound on the whole run: a fixed part plus 1 s per MiB, that is
/// writing and reading through the mount at 2 MiB/s together. Only a hang
/// should reach it.
const RUN_TIMEOUT_FIXED_S: u64 = 300;
const RUN_TIMEOUT_S_PER_MIB: u64 = 1;
const LOG_TAIL_LINES: usize = 30;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and a
    // test run must not start a cluster and write a gigabyte.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("mount_throughput: skipped; run it with `cargo bench -p sohofs-benches --bench mount_throughput`");
        return;
    }
    let result = settings().and_then(|settings| {
        let guard = Guard::install(settings.run_timeout)?;
        let result = run(&settings, &guard);
        guard.finish();
        result
    });
    if let Err(error) = result {
        eprintln!("mount_throughput: {error:#}");
        std::process::exit(1);
    }
}

struct Settings {
    mib: u64,
    sohofs_bin: PathBuf,
    target_dir: PathBuf,
    run_timeout: Duration,
}

fn settings() -> Result<Settings> {
    let mib = match std::env::var("SOHOFS_BENCH_MIB") {
        Ok(text) => text
            .parse::<u64>()
            .ok()
            .filter(|mib| *mib > 0)
            .with_context(|| format!("SOHOFS_BENCH_MIB={text:?} is not a positive number of MiB"))?,
        Err(_) => MIB_DEFAULT,
    };
    let run_timeout = match std::env::var("SOHOFS_BENCH_TIMEOUT_S") {
        Ok(text) => Duration::from_secs(
            text.parse()
                .with_context(|| format!("SOHOFS_BENCH_TIMEOUT_S={text:?} is not a number of seconds"))?,
        ),
        Err(_) => Duration::from_secs(RUN_TIMEOUT_FIXED_S + RUN_TIMEOUT_S_PER_MIB * mib),
    };
    let target_dir = target_dir()?;
    let sohofs_bin = match std::env::var_os("SOHOFS_BIN") {
        Some(path) => PathBuf::from(path),
        None => ["debug", "release"]
            .iter()
            .map(|profile| target_dir.join(profile).join("sohofs"))
            .find(|path| path.is_file())
            .with_context(|| {
                format!(
                    "no sohofs binary in {0}/debug or {0}/release; run `cargo build -p sohofs-control` \
                     or set SOHOFS_BIN",
                    target_dir.display()
                )
            })?,
    };
    ensure!(
        sohofs_bin.is_file(),
        "SOHOFS_BIN {} is not a file (a relative path is taken from benches/, where cargo runs benches)",
        sohofs_bin.display()
    );
    Ok(Settings {
        mib,
        sohofs_bin,
        target_dir,
        run_timeout,
    })
}

/// The target directory this bench was built in: it runs as
/// `<target>/<profile>/deps/mount_throughput-<hash>`. CARGO_TARGET_DIR is only
/// the fallback, since a relative one is relative to where cargo was started,
/// not to where it runs benches.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    if let Some(deps) = exe.parent().filter(|dir| dir.ends_with("deps")) {
        if let Some(target) = deps.parent().and_then(Path::parent) {
            return Ok(target.to_path_buf());
        }
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .context("cannot tell the target directory; set CARGO_TARGET_DIR")
}

#[derive(Debug, Clone, Copy)]
struct Throughput {
    write_s: f64,
    read_s: f64,
    /// Whether the page cache was dropped before the read (needs root).
    page_cache_dropped: bool,
}

impl Throughput {
    fn write_mb_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / 1e6 / self.write_s
    }

    fn read_mb_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / 1e6 / self.read_s
    }
}

fn run(settings: &Settings, guard: &Arc<Guard>) -> Result<()> {
    let bytes = settings.mib * BLOCK_BYTES as u64;
    let work = tempfile::Builder::new()
        .prefix("sohofs-bench-")
        .tempdir()
        .context("make a temporary folder")?;
    println!(
        "mount_throughput: {} MiB in 1 MiB blocks; sohofs {} ({}); work folder {}",
        settings.mib,
        settings.sohofs_bin.display(),
        modified_ago(&settings.sohofs_bin),
        work.path().display()
    );
    let mut pattern = Pattern::new();

    let cluster = Cluster::start(&settings.sohofs_bin, work.path(), guard)?;
    let sohofs_file = cluster.mountpoint.join("throughput.bin");
    let sohofs = measure("sohofs", &sohofs_file, settings.mib, &mut pattern, guard).and_then(|fuse| {
        let nfs = measure_nfs(settings, work.path(), &cluster.mountpoint, &mut pattern, guard)?;
        Ok((fuse, nfs))
    });
    if sohofs.is_err() {
        print_tail(&work.path().join("up.log"));
    }
    drop(cluster);
    let (sohofs, nfs) = sohofs?;

    let plain_dir = work.path().join("plain");
    std::fs::create_dir(&plain_dir).with_context(|| format!("create {}", plain_dir.display()))?;
    let plain = measure(
        "plain disk",
        &plain_dir.join("throughput.bin"),
        settings.mib,
        &mut pattern,
        guard,
    )?;

    let caches_dropped = sohofs.page_cache_dropped && plain.page_cache_dropped;
    let label = format!("sohofs ({NODES} nodes, {DATA_SHARDS}+{PARITY_SHARDS})");
    println!();
    println!("{:<28} {:>12} {:>12}", "target", "write MB/s", "read MB/s");
    println!(
        "{:<28} {:>12.1} {:>12.1}",
        label,
        sohofs.write_mb_per_s(bytes),
        sohofs.read_mb_per_s(bytes)
    );
    println!(
        "{:<28} {:>12.1} {:>12.1}",
        "sohofs NFSv3 gateway, nfs-cp",
        nfs.write_mb_per_s(bytes),
        nfs.read_mb_per_s(bytes)
    );
    println!(
        "{:<28} {:>12.1} {:>12.1}",
        "plain disk (same filesystem)",
        plain.write_mb_per_s(bytes),
        plain.read_mb_per_s(bytes)
    );
    println!(
        "{:<28} {:>12.2} {:>12.2}",
        "ratio sohofs/plain",
        sohofs.write_mb_per_s(bytes) / plain.write_mb_per_s(bytes),
        sohofs.read_mb_per_s(bytes) / plain.read_mb_per_s(bytes)
    );
    println!(
        "{:<28} {:>12.2} {:>12.2}",
        "ratio NFS/FUSE",
        nfs.write_mb_per_s(bytes) / sohofs.write_mb_per_s(bytes),
        nfs.read_mb_per_s(bytes) / sohofs.read_mb_per_s(bytes)
    );
    println!("(MB = 10^6 bytes; every byte read back was checked; page cache dropped before reads: {caches_dropped})");

    let row = |target: &str, t: &Throughput| {
        serde_json::json!({
            "target": target,
            "write_mb_per_s": t.write_mb_per_s(bytes),
            "read_mb_per_s": t.read_mb_per_s(bytes),
            "write_seconds": t.write_s,
            "read_seconds": t.read_s,
        })
    };
    let report = serde_json::json!({
        "bench": "mount_throughput",
        "unix_time_s": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "mib": settings.mib,
        "block_bytes": BLOCK_BYTES,
        "fsync_counted": true,
        "page_cache_dropped": caches_dropped,
        "verified": "every byte read back equals what was written",
        "sohofs_bin": settings.sohofs_bin,
        "cluster": { "nodes": NODES, "k": DATA_SHARDS, "m": PARITY_SHARDS },
        "results": [
            row(&label, &sohofs),
            row("sohofs NFSv3 gateway, nfs-cp", &nfs),
            row("plain disk", &plain)
        ],
        "ratio_nfs_fuse": {
            "write": nfs.write_mb_per_s(bytes) / sohofs.write_mb_per_s(bytes),
            "read": nfs.read_mb_per_s(bytes) / sohofs.read_mb_per_s(bytes),
        },
        "ratio_sohofs_plain": {
            "write": sohofs.write_mb_per_s(bytes) / plain.write_mb_per_s(bytes),
            "read": sohofs.read_mb_per_s(bytes) / plain.read_mb_per_s(bytes),
        },
    });
    let results_dir = settings.target_dir.join("bench-results");
    std::fs::create_dir_all(&results_dir).with_context(|| format!("create {}", results_dir.display()))?;
    let json_path = results_dir.join("mount_throughput.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;
    println!("mount_throughput: wrote {}", json_path.display());
    Ok(())
}

fn modified_ago(path: &Path) -> String {
    match std::fs::metadata(path).and_then(|m| m.modified()).map(|t| t.elapsed()) {
        Ok(Ok(age)) => format!("built {} s ago", age.as_secs()),
        _ => "build time unknown".into(),
    }
}

/// The file's contents: block `i` is random block `i % POOL_BLOCKS` with the
/// run's nonce and `i` written at the start of each page.
struct Pattern {
    nonce: u64,
    pool: Vec<Vec<u8>>,
}

impl Pattern {
    fn new() -> Pattern {
        let mut rng = rand::thread_rng();
        let pool = (0..POOL_BLOCKS)
            .map(|_| {
                let mut block = vec![0u8; BLOCK_BYTES];
                rng.fill_bytes(&mut block);
                block
            })
            .collect();
        Pattern {
            nonce: rng.next_u64(),
            pool,
        }
    }

    /// Block `index`, made in place in the pool (no copy on the timed path);
    /// the stamps cover what an earlier block of the same slot left.
    fn block(&mut self, index: u64) -> &[u8] {
        let block = &mut self.pool[(index % POOL_BLOCKS as u64) as usize];
        for page in block.chunks_mut(PAGE_BYTES) {
            page[..8].copy_from_slice(&self.nonce.to_le_bytes());
            page[8..16].copy_from_slice(&index.to_le_bytes());
        }
        block
    }
}

/// Writes then reads back `path`, timing each; the write counts the final
/// fsync and close, the read re-opens the file after the page cache is dropped.
fn measure(what: &str, path: &Path, mib: u64, pattern: &mut Pattern, guard: &Guard) -> Result<Throughput> {
    drop_page_cache();
    let started = Instant::now();
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    for index in 0..mib {
        guard.check()?;
        file.write_all(pattern.block(index))
            .with_context(|| format!("write block {index} of {}", path.display()))?;
    }
    file.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    drop(file);
    let write_s = started.elapsed().as_secs_f64();
    println!("mount_throughput: {what}: wrote {mib} MiB in {write_s:.2} s");

    let page_cache_dropped = drop_page_cache();
    if !page_cache_dropped {
        eprintln!("mount_throughput: cannot drop the page cache (not root?); reads may come from memory");
    }
    let mut buffer = vec![0u8; BLOCK_BYTES];
    let started = Instant::now();
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    for index in 0..mib {
        guard.check()?;
        file.read_exact(&mut buffer)
            .with_context(|| format!("read block {index} of {}", path.display()))?;
        // Compared in the timed loop: a 1 MiB memcmp is tens of microseconds,
        // where hashing would cost more than a plain-disk read of the block.
        let expected = pattern.block(index);
        if buffer != expected {
            let at = buffer.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
            bail!(
                "{what}: byte {} of {} differs from what was written",
                index * BLOCK_BYTES as u64 + at as u64,
                path.display()
            );
        }
    }
    let past_end = file
        .read(&mut buffer)
        .with_context(|| format!("read past the end of {}", path.display()))?;
    ensure!(
        past_end == 0,
        "{what}: {} is longer than the {mib} MiB written",
        path.display()
    );
    drop(file);
    let read_s = started.elapsed().as_secs_f64();
    println!("mount_throughput: {what}: read back and checked {mib} MiB in {read_s:.2} s");
    Ok(Throughput {
        write_s,
        read_s,
        page_cache_dropped,
    })
}

const NFS_FOLDER: &str = "nfs-throughput";
const NFS_FILE: &str = "data.bin";

/// `nfs-cp` of `mib` MiB into the volume through `sohofs nfs serve` on the
/// running cluster, then out again. The source is a plain-disk file made from
/// `pattern` before the clock starts; the copy that comes back and the file
/// as the FUSE mount at `mountpoint` sees it must both be the pattern.
fn measure_nfs(
    settings: &Settings,
    work: &Path,
    mountpoint: &Path,
    pattern: &mut Pattern,
    guard: &Guard,
) -> Result<Throughput> {
    let mib = settings.mib;
    let source = work.join("nfs-source.bin");
    let back = work.join("nfs-back.bin");
    let mut file = File::create(&source).with_context(|| format!("create {}", source.display()))?;
    for index in 0..mib {
        file.write_all(pattern.block(index))
            .with_context(|| format!("write {}", source.display()))?;
    }
    drop(file);
    let gateway = NfsGateway::start(&settings.sohofs_bin, &work.join("cluster").join("sohofs.toml"), work)?;
    // libnfs takes the URL's last component as the file and the rest as the
    // export path to mount, so the file lives in a folder below the export.
    let folder = mountpoint.join(NFS_FOLDER);
    std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
    let url = format!(
        "nfs://127.0.0.1/{NFS_FOLDER}/{NFS_FILE}?nfsport={port}&mountport={port}&version=3",
        port = gateway.port
    );

    drop_page_cache();
    let started = Instant::now();
    nfs_cp(&source.display().to_string(), &url, guard)?;
    let write_s = started.elapsed().as_secs_f64();
    println!("mount_throughput: NFS: nfs-cp in {mib} MiB in {write_s:.2} s");
    let page_cache_dropped = drop_page_cache();
    let started = Instant::now();
    nfs_cp(&url, &back.display().to_string(), guard)?;
    let read_s = started.elapsed().as_secs_f64();
    println!("mount_throughput: NFS: nfs-cp out {mib} MiB in {read_s:.2} s");
    drop(gateway);

    check_pattern("NFS copy out", &back, mib, pattern, guard)?;
    check_pattern(
        "NFS copy seen through FUSE",
        &folder.join(NFS_FILE),
        mib,
        pattern,
        guard,
    )?;
    for path in [&source, &back] {
        std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(Throughput {
        write_s,
        read_s,
        page_cache_dropped,
    })
}

fn nfs_cp(from: &str, to: &str, guard: &Guard) -> Result<()> {
    guard.check()?;
    let output = Command::new("nfs-cp")
        .args([from, to])
        .stdin(Stdio::null())
        .output()
        .context("run nfs-cp (Debian package libnfs-utils; scripts/install-deps.sh installs it)")?;
    ensure!(
        output.status.success(),
        "nfs-cp {from} {to}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Reads `path` and fails unless it is exactly `mib` blocks of `pattern`.
fn check_pattern(what: &str, path: &Path, mib: u64, pattern: &mut Pattern, guard: &Guard) -> Result<()> {
    let mut buffer = vec![0u8; BLOCK_BYTES];
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    for index in 0..mib {
        guard.check()?;
        file.read_exact(&mut buffer)
            .with_context(|| format!("{what}: read block {index} of {}", path.display()))?;
        ensure!(
            buffer == pattern.block(index),
            "{what}: block {index} of {} differs",
            path.display()
        );
    }
    ensure!(
        file.read(&mut buffer)? == 0,
        "{what}: {} is longer than {mib} MiB",
        path.display()
    );
    println!("mount_throughput: {what}: checked {mib} MiB");
    Ok(())
}

/// `sohofs nfs serve` on a port the kernel picks, stopped (SIGTERM, then
/// SIGKILL) when dropped; it also gets SIGTERM if this process dies.
struct NfsGateway {
    child: Child,
    port: u16,
}

impl NfsGateway {
    fn start(sohofs_bin: &Path, config: &Path, work: &Path) -> Result<NfsGateway> {
        let log_path = work.join("nfs.log");
        let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut command = Command::new(sohofs_bin);
        command
            .args(["nfs", "serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // SAFETY: as in `Cluster::start`: only async-signal-safe calls.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                SigSet::empty().thread_set_mask().map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().context("start sohofs nfs serve")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut gateway = NfsGateway { child, port: 0 };
        // "sohofs: NFSv3 export / serving on 127.0.0.1:PORT to …"
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read the gateway's first line")?;
        let port = line
            .split_once("serving on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|address| address.parse::<std::net::SocketAddr>().ok())
            .map(|address| address.port());
        match port {
            Some(port) => gateway.port = port,
            None => {
                print_tail(&log_path);
                bail!("sohofs nfs serve did not say where it serves (first line: {line:?})");
            }
        }
        Ok(gateway)
    }
}

impl Drop for NfsGateway {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes back dirty pages and drops the page cache, so that reads come from
/// the disk (for sohofs: from the shard files on the nodes). Needs root.
fn drop_page_cache() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

fn print_tail(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("mount_throughput: last lines of {}:", path.display());
    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
        eprintln!("  {line}");
    }
}

/// What the watchdog needs to kill a cluster it does not own.
struct ClusterHandle {
    pid: Pid,
    mountpoint: PathBuf,
}

impl ClusterHandle {
    /// The last resort: SIGKILL the whole process group and detach the mount.
    fn kill(&self) {
        match signal::killpg(self.pid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => eprintln!("mount_throughput: SIGKILL process group {}: {error}", self.pid),
        }
        detach_mount(&self.mountpoint);
    }
}

/// Stops runs that were asked to stop (SIGINT/SIGTERM) or that hang.
struct Guard {
    stop_requested: AtomicBool,
    finished: AtomicBool,
    cluster: Mutex<Option<ClusterHandle>>,
}

impl Guard {
    /// Blocks SIGINT and SIGTERM in this thread and every thread it starts
    /// from now on, and takes them in a thread of their own with `sigwait`,
    /// so that no signal handler is needed. The mask is inherited through
    /// fork and exec, so `Cluster::start` clears it for `up`.
    fn install(run_timeout: Duration) -> Result<Arc<Guard>> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGINT);
        signals.add(Signal::SIGTERM);
        signals.thread_block().context("block SIGINT and SIGTERM")?;
        let guard = Arc::new(Guard {
            stop_requested: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            cluster: Mutex::new(None),
        });
        let (signalled, signal_seen) = mpsc::channel::<Signal>();
        std::thread::spawn(move || {
            while let Ok(received) = signals.wait() {
                if signalled.send(received).is_err() {
                    return;
                }
            }
        });
        let watched = guard.clone();
        std::thread::spawn(move || watched.watch(signal_seen, run_timeout));
        Ok(guard)
    }

    fn watch(&self, signal_seen: mpsc::Receiver<Signal>, run_timeout: Duration) {
        let mut deadline = Instant::now().checked_add(run_timeout);
        while !self.finished.load(Ordering::SeqCst) {
            match signal_seen.recv_timeout(Duration::from_secs(1)) {
                Ok(received) => {
                    eprintln!("mount_throughput: got {received}; stopping");
                    self.stop_requested.store(true, Ordering::SeqCst);
                    let grace_end = Instant::now() + SIGNAL_GRACE;
                    deadline = Some(deadline.map_or(grace_end, |d| d.min(grace_end)));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                // Taken, so that dropping the `Cluster` knows it was killed;
                // killed under the lock, so that the drop waits for it.
                let mut cluster = self.cluster.lock().expect("guard lock");
                if let Some(handle) = cluster.take() {
                    eprintln!("mount_throughput: run did not finish in time; killing the cluster");
                    handle.kill();
                }
                drop(cluster);
                self.stop_requested.store(true, Ordering::SeqCst);
                deadline = None;
            }
        }
    }

    /// Fails once a stop was asked for.
    fn check(&self) -> Result<()> {
        ensure!(!self.stop_requested.load(Ordering::SeqCst), "stopped before the end");
        Ok(())
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// A running `sohofs up`; dropping it stops the cluster and unmounts.
struct Cluster {
    child: Child,
    mountpoint: PathBuf,
    guard: Arc<Guard>,
}

impl Cluster {
    fn start(sohofs_bin: &Path, work: &Path, guard: &Arc<Guard>) -> Result<Cluster> {
        let dir = work.join("cluster");
        let mountpoint = work.join("mnt");
        std::fs::create_dir_all(&mountpoint).with_context(|| format!("create {}", mountpoint.display()))?;
        let log_path = work.join("up.log");
        let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut command = Command::new(sohofs_bin);
        command
            .arg("up")
            .args(["--nodes", &NODES.to_string()])
            .args(["--k", &DATA_SHARDS.to_string()])
            .args(["--m", &PARITY_SHARDS.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--mount")
            .arg(&mountpoint)
            // Plain text in up.log and the node logs (tracing colours by default).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            // Its own group, so that one killpg reaches meta and the nodes too.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls pthread_sigmask(3) and prctl(2), which are async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                // Our blocked SIGINT/SIGTERM would otherwise stay blocked in
                // `up` (std does not reset the mask), and it could not be stopped.
                SigSet::empty().thread_set_mask().map_err(std::io::Error::from)?;
                // If this process dies without stopping it, `up` still stops cleanly.
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("start {} up", sohofs_bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let cluster = Cluster {
            child,
            mountpoint,
            guard: guard.clone(),
        };
        *guard.cluster.lock().expect("guard lock") = Some(ClusterHandle {
            pid: Pid::from_raw(cluster.child.id() as i32),
            mountpoint: cluster.mountpoint.clone(),
        });

        let (line_sent, line_seen) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining after the mount, so that `up` never blocks on a
            // full pipe.
            for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
                println!("mount_throughput: up: {line}");
                let _ = line_sent.send(line);
            }
        });
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            guard.check()?;
            match line_seen.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("mounted at") => {
                    // `up` checks that all nodes are up by asking meta, but the
                    // client places shards by its own node view, refreshed
                    // every second; writes right after the mount can find it
                    // stale ("only 2 hosts can take a stripe") and fail.
                    std::thread::sleep(MOUNT_SETTLE);
                    return Ok(cluster);
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    print_tail(&log_path);
                    bail!("sohofs up ended before it mounted the volume");
                }
            }
            if Instant::now() > deadline {
                print_tail(&log_path);
                bail!("sohofs up did not mount the volume in {} s", MOUNT_TIMEOUT.as_secs());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let handle = ClusterHandle {
            pid: Pid::from_raw(self.child.id() as i32),
            mountpoint: self.mountpoint.clone(),
        };
        // None when the watchdog has killed the cluster already.
        let watched = self.guard.cluster.lock().expect("guard lock").take();
        let stopped = match self.child.try_wait() {
            Ok(Some(status)) => {
                if watched.is_some() {
                    eprintln!("mount_throughput: sohofs up ended by itself ({status})");
                }
                // Its nodes get SIGTERM by PR_SET_PDEATHSIG; do not wait for them.
                handle.kill();
                return;
            }
            _ => {
                let _ = signal::kill(handle.pid, Signal::SIGTERM);
                let deadline = Instant::now() + STOP_TIMEOUT;
                loop {
                    match self.child.try_wait() {
                        Ok(Some(_)) => break true,
                        Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                        _ => break false,
                    }
                }
            }
        };
        if stopped {
            // `up` has waited for its children: anything left in its group is
            // a bug of `up`, and must not outlive the benchmark either.
            if signal::killpg(handle.pid, Signal::SIGKILL).is_ok() {
                eprintln!("mount_throughput: processes were left in the cluster's group after `up` stopped");
            }
            detach_mount(&self.mountpoint);
        } else {
            eprintln!(
                "mount_throughput: sohofs up did not stop in {} s after SIGTERM; killing its process group",
                STOP_TIMEOUT.as_secs()
            );
            handle.kill();
            let _ = self.child.wait();
        }
    }
}

/// Detaches `mountpoint` if it is still mounted (a killed `up` leaves a dead
/// FUSE mount behind).
fn detach_mount(mountpoint: &Path) {
    if !is_mounted(mountpoint) {
        return;
    }
    eprintln!("mount_throughput: {} still mounted; detaching it", mountpoint.display());
    let detached = Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .status()
        .is_ok_and(|status| status.success());
    if !detached {
        let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = mountpoint.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| unescape_mountinfo(field) == wanted)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// three octal digits.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
