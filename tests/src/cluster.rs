//! `sohofs up` and `sohofs mount` as test fixtures.

use std::cell::Cell;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::mounts::{force_unmount, is_fuse_mounted, mounts_under};
use crate::process::{
    is_alive, kill_orphans_of_dead_test_processes, kill_tagged, log_tail, pids_with_tag, run_bounded, run_tag_of,
    terminate, wait_for_exit, RunTag,
};
use crate::status::Status;
use crate::wait::wait_until;

/// From spawning `up` or `mount` to its FUSE mount being ready. Generous:
/// a debug build on 2 cores starts meta, RocksDB and six nodes first.
pub const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// From SIGTERM to `up` or `mount` exiting, before the harness SIGKILLs.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// For processes and mounts to be gone once their owner has exited.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// One `sohofs status` call.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of each log a failure report shows.
const LOG_TAIL_LINES: usize = 60;

/// The words `up` prints once its mount is ready (the contract's readiness
/// line is `... mounted at <path> ...`).
pub const READY_WORDS: &str = "mounted at";

/// Scratch directories are named `sohofs-e2e-<pid>-…` so that leftovers of a
/// test process that died can be recognised.
const SCRATCH_PREFIX: &str = "sohofs-e2e-";
/// Set to keep the scratch directory (data, logs) of a failed test.
const KEEP_ON_FAILURE_VAR: &str = "SOHOFS_E2E_KEEP";

/// The `sohofs` binary under test: `$SOHOFS_BIN`, else the one cargo built
/// next to this test's target directory (test executables live in
/// `target/<profile>/deps/`, the binary in `target/<profile>/`).
pub fn sohofs_bin() -> PathBuf {
    let bin = match env::var_os("SOHOFS_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let test_exe = env::current_exe().expect("path of the test executable");
            let deps_dir = test_exe.parent().expect("test executable has a directory");
            deps_dir.parent().expect("deps directory has a parent").join("sohofs")
        }
    };
    assert!(
        bin.is_file(),
        "sohofs binary not found at {} — build it first with \
         `cargo build -p sohofs-control --bin sohofs`, or set SOHOFS_BIN",
        bin.display()
    );
    bin
}

/// Held while a test runs a cluster: one cluster at a time, across threads of
/// one test binary and across test binaries. `flock` locks belong to an open
/// file description, so two opens of the file in one process exclude each
/// other just as two processes do.
struct SerialGuard {
    _lock: Flock<File>,
}

impl SerialGuard {
    fn acquire() -> SerialGuard {
        let path = env::temp_dir().join("sohofs-e2e.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, errno)| panic!("lock {}: {errno}", path.display()));
        SerialGuard { _lock: lock }
    }
}

/// Under the lock, no other cluster of this harness is running, so anything
/// left under a scratch directory of a dead test process is garbage: its
/// processes, its mounts, its files.
fn sweep_leftovers_of_dead_test_processes() {
    let killed = kill_orphans_of_dead_test_processes();
    if killed > 0 {
        eprintln!("e2e: killed {killed} processes left by a test process that died");
        thread::sleep(Duration::from_millis(500));
    }
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|owner| owner.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let scratch = entry.path();
        for mount_point in mounts_under(&scratch) {
            force_unmount(&mount_point);
        }
        // Never delete through a mount that would not go away.
        if mounts_under(&scratch).is_empty() {
            let _ = fs::remove_dir_all(&scratch);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterOptions {
    pub nodes: u32,
    pub k: u32,
    pub m: u32,
}

/// `sohofs up` on a scratch directory, with its FUSE mount.
///
/// Layout of the scratch directory: `data/` is `--dir` (meta, nodes,
/// `sohofs.toml`), `mnt/` is `--mount`, `client-<n>/` the mount points of
/// second clients, `logs/` the output of every process started.
pub struct Cluster {
    options: ClusterOptions,
    /// More arguments for `up` (e.g. `--grace-period 3`).
    up_args: Vec<String>,
    bin: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    mount_dir: PathBuf,
    logs_dir: PathBuf,
    tag: RunTag,
    up: Option<Child>,
    up_runs: u32,
    clients_started: Cell<u32>,
    /// Extra environment of every process started (e.g. failpoints).
    env: Vec<(String, String)>,
    scratch: Option<TempDir>,
    // Declared last: fields drop in order, so the lock is released only after
    // `Drop::drop` has stopped everything and the scratch directory is gone.
    _serial: SerialGuard,
}

impl Cluster {
    /// Starts `sohofs up` and returns once its mount is ready.
    pub fn start(options: ClusterOptions) -> Cluster {
        Cluster::start_with(options, &[], &[])
    }

    /// Like [`Cluster::start`], passing `up_args` to every `up` run.
    pub fn start_with_up_args(options: ClusterOptions, up_args: &[&str]) -> Cluster {
        Cluster::start_with(options, up_args, &[])
    }

    /// [`Cluster::start`] with extra environment for every process it starts
    /// (`SOHOFS_FAILPOINTS`, …), until [`Cluster::set_env`] changes it.
    pub fn start_with_env(options: ClusterOptions, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(options, &[], env)
    }

    /// [`Cluster::start`] with extra `up` arguments and environment.
    pub fn start_with(options: ClusterOptions, up_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let serial = SerialGuard::acquire();
        sweep_leftovers_of_dead_test_processes();
        let bin = sohofs_bin();
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("create a scratch directory");
        // Canonical, so that it compares equal to mount points in mountinfo.
        let root = scratch
            .path()
            .canonicalize()
            .expect("canonicalize the scratch directory");
        let mount_dir = root.join("mnt");
        let logs_dir = root.join("logs");
        fs::create_dir(&mount_dir).expect("create the mount point");
        fs::create_dir(&logs_dir).expect("create the logs directory");
        let mut cluster = Cluster {
            options,
            up_args: up_args.iter().map(|arg| arg.to_string()).collect(),
            bin,
            data_dir: root.join("data"),
            mount_dir,
            logs_dir,
            root,
            tag: RunTag::new(),
            up: None,
            up_runs: 0,
            clients_started: Cell::new(0),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            scratch: Some(scratch),
            _serial: serial,
        };
        cluster.start_again();
        cluster
    }

    /// Runs `sohofs up` (again) on the same data directory and mount point.
    pub fn start_again(&mut self) {
        assert!(self.up.is_none(), "`up` is already running");
        self.up_runs += 1;
        let log = self.logs_dir.join(format!("up-{}.log", self.up_runs));
        let mut command = Command::new(&self.bin);
        command
            .arg("up")
            .arg("--nodes")
            .arg(self.options.nodes.to_string())
            .arg("--k")
            .arg(self.options.k.to_string())
            .arg("--m")
            .arg(self.options.m.to_string())
            .arg("--dir")
            .arg(&self.data_dir)
            .arg("--mount")
            .arg(&self.mount_dir)
            .args(&self.up_args);
        let child = self.spawn_logged(command, &log);
        self.up = Some(child);
        let up = self.up.as_mut().expect("just set");
        wait_for_mount(up, &self.mount_dir, &log, Some(READY_WORDS));
        assert!(
            self.config_path().is_file(),
            "`up` is mounted but wrote no cluster config at {}",
            self.config_path().display()
        );
    }

    /// Sends SIGTERM to `up` and checks that it keeps the contract: exits 0,
    /// unmounts, and leaves none of its children running.
    pub fn stop(&mut self) {
        let mut up = self.up.take().expect("`up` is running");
        let pid = up.id();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let exited = wait_for_exit(&mut up, STOP_TIMEOUT);
        let log = self.logs_dir.join(format!("up-{}.log", self.up_runs));
        let Some(status) = exited else {
            terminate(&mut up, Duration::ZERO);
            panic!(
                "`up` (pid {pid}) did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                log_tail(&log, LOG_TAIL_LINES)
            );
        };
        assert!(
            status.success(),
            "`up` exited with {status} after SIGTERM, not 0\n{}",
            log_tail(&log, LOG_TAIL_LINES)
        );
        wait_until(
            "`up` has unmounted after SIGTERM",
            GONE_TIMEOUT,
            || match is_fuse_mounted(&self.mount_dir) {
                false => Ok(()),
                true => Err(format!("{} is still mounted", self.mount_dir.display())),
            },
        );
        wait_until("every child of `up` has exited", GONE_TIMEOUT, || {
            let left = pids_with_tag(&self.tag);
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("still running: {}", describe_pids(&left))),
            }
        });
    }

    /// A crash of every process of the cluster at once: SIGKILL to `up`,
    /// meta and every node, then the dead mount is detached. Nothing gets
    /// to flush or sync; what the kernel already holds stays (as when the
    /// processes, not the machine, die). `start_again` restarts it.
    pub fn crash(&mut self) {
        let mut up = self.up.take().expect("`up` is running");
        for pid in pids_with_tag(&self.tag) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = up.kill();
        let _ = up.wait();
        wait_until("every process of the cluster is dead", GONE_TIMEOUT, || {
            let left = pids_with_tag(&self.tag);
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("still running: {}", describe_pids(&left))),
            }
        });
        crate::mounts::force_unmount(&self.mount_dir);
    }

    pub fn options(&self) -> ClusterOptions {
        self.options
    }

    /// The volume as mounted by `up`.
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// `--dir`: meta, nodes and the cluster config.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `DIR/nodes`, where the nodes keep their shards.
    pub fn nodes_dir(&self) -> PathBuf {
        self.data_dir.join("nodes")
    }

    /// `DIR/meta`.
    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }

    pub fn config_path(&self) -> PathBuf {
        self.data_dir.join("sohofs.toml")
    }

    /// A scratch directory for the test's own files, on the local disk,
    /// removed with the cluster.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join("scratch").join(name);
        fs::create_dir_all(&dir).expect("create a scratch directory");
        dir
    }

    pub fn tag(&self) -> &RunTag {
        &self.tag
    }

    /// The pid in `DIR/nodes/<id>/node.pid`, checked to be a live process of
    /// this cluster (a stale pid file must not make the test kill a stranger).
    pub fn node_pid(&self, id: u32) -> i32 {
        let pid_path = self.nodes_dir().join(id.to_string()).join("node.pid");
        let text = fs::read_to_string(&pid_path).unwrap_or_else(|error| panic!("read {}: {error}", pid_path.display()));
        let pid: i32 = text
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{} holds {text:?}, not a pid: {error}", pid_path.display()));
        assert!(
            run_tag_of(pid).as_deref() == Some(self.tag.value()),
            "{} names pid {pid}, which is not a running process of this cluster",
            pid_path.display()
        );
        pid
    }

    /// SIGKILLs node `id` and waits until it is dead.
    pub fn kill_node(&self, id: u32) {
        let pid = self.node_pid(id);
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .unwrap_or_else(|errno| panic!("SIGKILL node {id} (pid {pid}): {errno}"));
        wait_until(
            &format!("node {id} (pid {pid}) is dead"),
            GONE_TIMEOUT,
            || match is_alive(pid) {
                false => Ok(()),
                true => Err("still alive".to_owned()),
            },
        );
    }

    /// Runs `sohofs status --config DIR/sohofs.toml --json` and parses it.
    /// A non-zero exit or output off the contract is an `Err` (callers poll);
    /// hanging past [`STATUS_TIMEOUT`] panics.
    pub fn status(&self) -> Result<Status, String> {
        let mut command = Command::new(&self.bin);
        command
            .arg("status")
            .arg("--config")
            .arg(self.config_path())
            .arg("--json");
        self.apply_env(&mut command);
        let output = run_bounded(command, &self.tag, STATUS_TIMEOUT);
        if !output.status.success() {
            return Err(format!(
                "`sohofs status` exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Status::parse(&output.stdout)
    }

    /// Runs `sohofs ARGS --config DIR/sohofs.toml` to completion within
    /// `timeout` and returns its output (whatever its exit status).
    pub fn run_verb(&self, args: &[&str], timeout: Duration) -> std::process::Output {
        let mut command = Command::new(&self.bin);
        command.args(args).arg("--config").arg(self.config_path());
        self.apply_env(&mut command);
        run_bounded(command, &self.tag, timeout)
    }

    /// Starts a second client, `sohofs mount --config DIR/sohofs.toml MNT`,
    /// and returns once its mount is ready.
    pub fn mount_client(&self) -> Client<'_> {
        self.mount_client_with_args(&[])
    }

    /// [`Cluster::mount_client`] with more arguments for `mount`
    /// (`--identity FILE`).
    pub fn mount_client_with_args(&self, args: &[&str]) -> Client<'_> {
        let number = self.clients_started.get() + 1;
        self.clients_started.set(number);
        let mount_dir = self.root.join(format!("client-{number}"));
        fs::create_dir(&mount_dir).expect("create the client mount point");
        let log = self.logs_dir.join(format!("client-{number}.log"));
        let mut command = Command::new(&self.bin);
        command
            .arg("mount")
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .arg(&mount_dir);
        let child = self.spawn_logged(command, &log);
        // The client owns the child before the wait, so that a failed wait
        // still ends it in Client's Drop.
        let mut client = Client {
            _cluster: self,
            child: Some(child),
            mount_dir,
            log,
        };
        let child = client.child.as_mut().expect("just set");
        wait_for_mount(child, &client.mount_dir, &client.log, None);
        client
    }

    /// Sets (or with `None` removes) a variable of the extra environment;
    /// it applies to processes started from now on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_string(), value.to_string()));
        }
    }

    fn apply_env(&self, command: &mut Command) {
        if env::var_os("SOHOFS_LOG").is_none() {
            command.env("SOHOFS_LOG", "info");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
    }

    fn spawn_logged(&self, mut command: Command, log: &Path) -> Child {
        let log_file = File::create(log).expect("create a log file");
        self.apply_env(&mut command);
        self.tag.apply(&mut command);
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file handle"))
            .stderr(log_file);
        command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {command:?}: {error}"))
    }

    fn print_logs(&self) {
        let Ok(entries) = fs::read_dir(&self.logs_dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        logs.sort();
        for log in logs {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of {} -----\n{}",
                log.display(),
                log_tail(&log, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = thread::panicking();
        if let Some(mut up) = self.up.take() {
            terminate(&mut up, STOP_TIMEOUT);
        }
        let survivors = kill_tagged(&self.tag, GONE_TIMEOUT);
        if !survivors.is_empty() {
            eprintln!("e2e cleanup: could not kill {}", describe_pids(&survivors));
        }
        for mount_point in mounts_under(&self.root) {
            force_unmount(&mount_point);
        }
        if failed {
            self.print_logs();
        }
        let still_mounted = mounts_under(&self.root);
        let keep = failed && env::var_os(KEEP_ON_FAILURE_VAR).is_some();
        if !still_mounted.is_empty() || keep {
            // Deleting the scratch directory would walk into the mount.
            if let Some(scratch) = self.scratch.take() {
                let kept = scratch.keep();
                eprintln!("e2e: kept {} (mounts left: {still_mounted:?})", kept.display());
            }
        }
    }
}

/// A second `sohofs mount` of a cluster. Borrows the cluster, so it is always
/// stopped before the cluster is.
pub struct Client<'cluster> {
    _cluster: &'cluster Cluster,
    child: Option<Child>,
    mount_dir: PathBuf,
    log: PathBuf,
}

impl Client<'_> {
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// Sends SIGTERM and checks the contract: exit 0, unmounted.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("client is running");
        let pid = child.id();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let Some(status) = wait_for_exit(&mut child, STOP_TIMEOUT) else {
            terminate(&mut child, Duration::ZERO);
            panic!(
                "`mount` (pid {pid}) did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                log_tail(&self.log, LOG_TAIL_LINES)
            );
        };
        terminate(&mut child, Duration::ZERO);
        assert!(
            status.success(),
            "`mount` exited with {status} after SIGTERM, not 0\n{}",
            log_tail(&self.log, LOG_TAIL_LINES)
        );
        wait_until(
            "the second client has unmounted",
            GONE_TIMEOUT,
            || match is_fuse_mounted(&self.mount_dir) {
                false => Ok(()),
                true => Err(format!("{} is still mounted", self.mount_dir.display())),
            },
        );
    }
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
        if is_fuse_mounted(&self.mount_dir) {
            force_unmount(&self.mount_dir);
        }
    }
}

/// Waits until `child` has a FUSE mount at `mount_dir` (and, when
/// `ready_words` is given, has printed them). Panics with its log if it
/// exits first or the deadline passes; the caller's Drop then cleans up.
fn wait_for_mount(child: &mut Child, mount_dir: &Path, log: &Path, ready_words: Option<&str>) {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited ({status}) before mounting {}\n{}",
                log.display(),
                mount_dir.display(),
                log_tail(log, LOG_TAIL_LINES)
            );
        }
        let said_ready = match ready_words {
            None => true,
            Some(words) => fs::read(log).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(words)),
        };
        if said_ready && is_fuse_mounted(mount_dir) {
            return;
        }
        if started.elapsed() >= MOUNT_READY_TIMEOUT {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            panic!(
                "no FUSE mount at {} within {MOUNT_READY_TIMEOUT:?} (printed {ready_words:?}: {said_ready})\n{}",
                mount_dir.display(),
                log_tail(log, LOG_TAIL_LINES)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `pid (comm)` for each pid, for messages about processes left running.
fn describe_pids(pids: &[i32]) -> String {
    pids.iter()
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| cmdline.replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            format!("{pid} ({comm})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
