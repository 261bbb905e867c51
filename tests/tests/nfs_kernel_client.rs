//! The NFSv3 gateway with the real Linux NFS client: the kernel-nfs tool
//! (`../shared/tools/kernel-nfs/run-guest.sh`, a stock Debian kernel under
//! QEMU in a private network namespace) mounts the export of a 3-node 2+1
//! cluster and runs the tool's `checks/basic.txt`, then our
//! `tests/knfs/sohofs.txt` (hard links, a 5,000-entry `ls -l`, `rm -r` of a
//! tree, rename over an existing file, 256 MiB `dd` with md5). Every check
//! must print `KNFS-RESULT PASS`, plus `mount` and `umount`, and the tool's
//! closing line must be `N passed, 0 failed`. Then the host checks through
//! the FUSE mount what the guest left: the md5 sums the guest wrote into the
//! export match the files read through FUSE, and the hard links, the big
//! directory and the renames look the same from there.
//!
//! Network: `run-guest.sh --net-up` puts 198.51.100.1/24 (`KNFS_NET`.1) on a
//! veth whose other end is in the tool's namespace with the VM; the gateway
//! listens on that address only, and the guest reaches nothing else. The
//! namespace is removed at the end (after the gateway has stopped, because
//! `--net-down` refuses while a socket to the guest is connected), also
//! when the test fails. Root squash stays on (the default), so the guest's
//! root acts as 65534: the test makes the volume root 0777 through FUSE first.
//!
//! The tool is `$SOHOFS_KNFS_TOOL` when set, else `../shared/tools/kernel-nfs`
//! beside the repository; missing, the test fails and says where it looked.
//! Its first run fetches the kernel with apt-get into `~/.cache/kernel-nfs`.
//! Needs root. Several minutes under TCG (see the tool's README).

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use sohofs_e2e::gateway::{free_port_on, Gateway};
use sohofs_e2e::process::{run_bounded, run_ok, RunTag};
use sohofs_e2e::{bounded, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };
/// Overrides where the kernel-nfs tool is.
const TOOL_VAR: &str = "SOHOFS_KNFS_TOOL";
/// The tool's default network, `KNFS_NET` (first three octets of a /24).
const KNFS_NET_DEFAULT: &str = "198.51.100";
/// The VM's wall-clock limit (`--timeout`): boot, mount, every check,
/// under TCG, with a debug gateway behind it.
const GUEST_TIMEOUT_SECS: u64 = 1500;
/// One check inside the guest (`--check-timeout`): the 256 MiB `dd` and the
/// 5,000 creates are the slow ones.
const CHECK_TIMEOUT_SECS: u64 = 900;
/// `--net-up`, `--net-down`, `md5sum` of 256 MiB through FUSE.
const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `--net-down` may keep refusing (connections to the guest still
/// closing) before the test gives up on removing the namespace.
const NET_DOWN_PATIENCE: Duration = Duration::from_secs(60);
const BASIC_CHECKS: &str = "checks/basic.txt";
const OUR_CHECKS: &str = "knfs/sohofs.txt";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The kernel-nfs tool's folder; panics, saying where it looked, if absent.
fn knfs_tool() -> PathBuf {
    let relative = repo_root().join("../shared/tools/kernel-nfs");
    let (dir, how) = match env::var_os(TOOL_VAR) {
        Some(dir) => (PathBuf::from(dir), format!("${TOOL_VAR}")),
        None => (
            relative,
            format!("../shared/tools/kernel-nfs beside the repository ({TOOL_VAR} unset)"),
        ),
    };
    assert!(
        dir.join("run-guest.sh").is_file() && dir.join(BASIC_CHECKS).is_file(),
        "the kernel-nfs tool is missing: no run-guest.sh and {BASIC_CHECKS} in {} (from {how}); \
         check out shared/ beside the repository or set {TOOL_VAR} to the tool's folder",
        dir.display()
    );
    dir.canonicalize().expect("canonicalize the tool's folder")
}

/// The host side of the tool's veth.
fn host_address() -> Ipv4Addr {
    let net = env::var("KNFS_NET").unwrap_or_else(|_| KNFS_NET_DEFAULT.to_owned());
    format!("{net}.1")
        .parse()
        .unwrap_or_else(|error| panic!("KNFS_NET={net:?} is not three octets: {error}"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The tool's private network, removed when dropped (also on a panic).
struct PrivateNet {
    script: PathBuf,
    tag: RunTag,
    up: bool,
}

/// Runs the tool's script through bash: CI's copy of shared/ may have lost
/// its mode bits.
fn guest_script(script: &Path) -> Command {
    let mut command = Command::new("bash");
    command.arg(script);
    command
}

impl PrivateNet {
    fn up(tool: &Path, tag: &RunTag) -> PrivateNet {
        let script = tool.join("run-guest.sh");
        let mut net = PrivateNet {
            script,
            tag: tag.clone(),
            up: true,
        };
        let mut command = guest_script(&net.script);
        command.arg("--net-up");
        let output = run_bounded(command, &net.tag, HOST_COMMAND_TIMEOUT);
        if !output.status.success() {
            net.up = false;
            panic!("run-guest.sh --net-up failed: {}", describe(&output));
        }
        net
    }

    /// `--net-down`, retried while connections to the guest are closing.
    fn down(&mut self) -> Result<(), String> {
        if !self.up {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let mut command = guest_script(&self.script);
            command.arg("--net-down");
            let output = run_bounded(command, &self.tag, HOST_COMMAND_TIMEOUT);
            if output.status.success() {
                self.up = false;
                return Ok(());
            }
            if started.elapsed() >= NET_DOWN_PATIENCE {
                return Err(format!(
                    "run-guest.sh --net-down still refused after {NET_DOWN_PATIENCE:?}: {}",
                    describe(&output)
                ));
            }
            thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        if let Err(error) = self.down() {
            eprintln!("nfs_kernel_client cleanup: {error}");
        }
    }
}

/// The names of the checks in a checks file, as run-guest.sh reads them.
fn check_names(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap_or_else(|error| panic!("read {}: {error}", file.display()));
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().next().expect("non-empty line").to_owned())
        .collect()
}

/// Runs one checks file in the guest against the gateway and asserts that
/// every check (and `mount`, `umount`) passed. Returns the tool's result lines.
fn run_checks(tool: &Path, cluster: &Cluster, gateway: &Gateway, checks: &Path, label: &str) -> Vec<String> {
    let console = cluster.scratch_dir("knfs").join(format!("console-{label}.log"));
    let mut command = guest_script(&tool.join("run-guest.sh"));
    command
        .arg("--server-port")
        .arg(gateway.port().to_string())
        .arg("--export")
        .arg("/")
        .arg("--checks")
        .arg(checks)
        .arg("--timeout")
        .arg(GUEST_TIMEOUT_SECS.to_string())
        .arg("--check-timeout")
        .arg(CHECK_TIMEOUT_SECS.to_string())
        .arg("--log")
        .arg(&console);
    let started = Instant::now();
    let output = run_bounded(command, cluster.tag(), Duration::from_secs(GUEST_TIMEOUT_SECS + 120));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<String> = stdout
        .lines()
        .filter(|line| line.starts_with("KNFS-RESULT") || line.contains(" passed, "))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "kernel client, {label} ({:.0?}):\n{}",
        started.elapsed(),
        lines.join("\n")
    );

    let mut expected = check_names(checks);
    expected.extend(["mount".to_owned(), "umount".to_owned()]);
    let passed: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("KNFS-RESULT PASS "))
        .collect();
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("KNFS-RESULT") && !line.starts_with("KNFS-RESULT PASS "))
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|name| !passed.contains(name.as_str())).collect();
    let closing = format!("{} passed, 0 failed", expected.len());
    let closed = stdout.lines().any(|line| line.trim() == closing);
    if !output.status.success() || !failed.is_empty() || !missing.is_empty() || !closed {
        let console_text = fs::read_to_string(&console).unwrap_or_default();
        let check_output: Vec<&str> = console_text
            .lines()
            .filter(|line| line.starts_with("KNFS-OUT") || line.starts_with("KNFS-INFO"))
            .collect();
        panic!(
            "the Linux NFS client failed {label}: not passed {missing:?}, failing lines {failed:?}, \
             closing line {closing:?} seen: {closed}\n{}\n--- check output (console) ---\n{}",
            describe(&output),
            check_output.join("\n")
        );
    }
    lines
}

fn md5_through_fuse(cluster: &Cluster, path: &Path) -> String {
    let mut command = Command::new("md5sum");
    command.arg(path);
    let output = run_ok(command, cluster.tag(), HOST_COMMAND_TIMEOUT);
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("md5sum printed nothing for {}", path.display()))
        .to_owned()
}

fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {} through FUSE: {error}", path.display()))
}

/// What the guest left on the export, seen through the FUSE mount.
fn check_through_fuse(cluster: &Cluster) {
    let mnt = cluster.mount_dir().to_owned();

    // basic.txt's 64 MiB file and ours of 256 MiB: the md5 the guest wrote.
    let basic_md5 = read_text(&mnt.join("big.bin.md5"));
    let basic_md5 = basic_md5.split_whitespace().next().expect("big.bin.md5 holds a sum");
    assert_eq!(
        md5_through_fuse(cluster, &mnt.join("big.bin")),
        basic_md5,
        "big.bin (64 MiB written by the guest) reads differently through FUSE"
    );
    let md5 = read_text(&mnt.join("big256.md5")).trim().to_owned();
    assert_eq!(md5.len(), 32, "big256.md5 holds {md5:?}, not an md5 sum");
    let big = mnt.join("big256.bin");
    assert_eq!(
        fs::metadata(&big).expect("stat big256.bin through FUSE").len(),
        256 << 20,
        "big256.bin's size through FUSE"
    );
    let through_fuse = md5_through_fuse(cluster, &big);
    eprintln!("big256.bin md5: guest {md5}, FUSE {through_fuse}");
    assert_eq!(
        through_fuse, md5,
        "big256.bin (256 MiB written by the guest) reads differently through FUSE"
    );

    bounded(
        "inspect the guest's files through FUSE",
        HOST_COMMAND_TIMEOUT,
        move || {
            // Hard links: a removed, b and c one inode with two links.
            assert!(!mnt.join("hl/a").exists(), "hl/a was removed by the guest");
            let b = fs::metadata(mnt.join("hl/b")).expect("stat hl/b");
            let c = fs::metadata(mnt.join("hl/c")).expect("stat hl/c");
            assert_eq!((b.ino(), b.nlink()), (c.ino(), 2), "hl/b and hl/c through FUSE");
            assert_eq!(read_text(&mnt.join("hl/c")), "one\ntwo\n");
            // The 5,000-entry directory.
            let entries = fs::read_dir(mnt.join("many")).expect("list many/").count();
            assert_eq!(entries, 5000, "entries of many/ through FUSE");
            // rm -r and the renames.
            assert!(!mnt.join("tree").exists(), "tree/ was removed by the guest");
            assert!(!mnt.join("r-old").exists() && !mnt.join("r-new").exists());
            assert_eq!(read_text(&mnt.join("r-dir/t")), "new\n");
            assert_eq!(read_text(&mnt.join("r-keep")), "old\n");
            assert!(!mnt.join("d-src").exists(), "d-src was renamed over d-dst");
            assert_eq!(read_text(&mnt.join("d-dst/x")), "x\n");
        },
    );
}

#[test]
fn linux_nfs_client_passes_basic_and_sohofs_checks() {
    let started = Instant::now();
    let tool = knfs_tool();
    let our_checks = Path::new(env!("CARGO_MANIFEST_DIR")).join(OUR_CHECKS);
    assert!(our_checks.is_file(), "missing {}", our_checks.display());

    let cluster = Cluster::start(OPTIONS);
    // Root squash is on: the guest's root is 65534 and writes into the root.
    fs::set_permissions(cluster.mount_dir(), fs::Permissions::from_mode(0o777)).expect("chmod 0777 the volume root");
    let mut net = PrivateNet::up(&tool, cluster.tag());
    let address = IpAddr::V4(host_address());
    let listen = SocketAddr::new(address, free_port_on(address));
    // The guest's network is a documentation range, not one of the private
    // ranges the gateway admits by default.
    let guest_network = format!("{}/24", host_address());
    let gateway = Gateway::start_with_args(&cluster, listen, None, &["--allow", &guest_network]);
    eprintln!("gateway on {listen}, ready after {:.0?}", started.elapsed());

    run_checks(&tool, &cluster, &gateway, &tool.join(BASIC_CHECKS), "basic.txt");
    run_checks(&tool, &cluster, &gateway, &our_checks, "sohofs.txt");

    let mut gateway = gateway;
    assert!(gateway.is_running(), "the gateway died\n{}", gateway.log_tail());
    gateway.stop();
    net.down().unwrap_or_else(|error| panic!("{error}"));

    check_through_fuse(&cluster);

    let mut cluster = cluster;
    cluster.stop();
    eprintln!("nfs_kernel_client: {:.0?} in all", started.elapsed());
}
