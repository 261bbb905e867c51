//! Processes the harness starts: each in its own process group, each tagged
//! through its environment so that its descendants can be found and ended even
//! when they left the group, and every wait bounded.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::wait::POLL_INTERVAL;

/// The environment variable that carries a [`RunTag`]. The engine ignores it;
/// children inherit it, which is all the harness needs.
pub const RUN_TAG_VAR: &str = "SOHOFS_E2E_RUN";

/// Marks every process that one harness object started, and their children.
/// Its value starts with the pid of the test process, so that a later run can
/// tell leftovers of a test process that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTag(String);

impl RunTag {
    pub fn new() -> RunTag {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RunTag(format!(
            "{}-{}-{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ))
    }

    pub fn value(&self) -> &str {
        &self.0
    }

    /// Applies the tag and a process group of its own to `command`.
    pub fn apply(&self, command: &mut Command) {
        command.env(RUN_TAG_VAR, &self.0).process_group(0);
    }
}

impl Default for RunTag {
    fn default() -> Self {
        RunTag::new()
    }
}

/// The run tag in a process's environment, if it has one. Unreadable for
/// zombies and for processes that are already gone.
pub fn run_tag_of(pid: i32) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{RUN_TAG_VAR}=");
    environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Every live (not zombie) process, with its run tag.
fn tagged_processes() -> Vec<(i32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_alive(*pid))
        .filter_map(|pid| Some((pid, run_tag_of(pid)?)))
        .collect()
}

/// Live processes that carry `tag`.
pub fn pids_with_tag(tag: &RunTag) -> Vec<i32> {
    tagged_processes()
        .into_iter()
        .filter(|(_, value)| value == tag.value())
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGKILLs every process tagged `tag` until none is left (bounded). Returns
/// the pids that were still alive at the deadline.
pub fn kill_tagged(tag: &RunTag, timeout: Duration) -> Vec<i32> {
    let started = Instant::now();
    loop {
        let pids = pids_with_tag(tag);
        if pids.is_empty() || started.elapsed() >= timeout {
            return pids;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILLs processes left by earlier test processes that died without
/// cleaning up (a test binary killed by Ctrl-C leaves its clusters running,
/// because they sit in process groups of their own). Returns how many.
pub fn kill_orphans_of_dead_test_processes() -> usize {
    let mut killed = 0;
    for (pid, value) in tagged_processes() {
        let owner = value.split('-').next().and_then(|owner| owner.parse::<i32>().ok());
        let owner_gone = owner.is_some_and(|owner| !Path::new(&format!("/proc/{owner}")).exists());
        if owner_gone && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain spaces and parentheses, so look after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Sends SIGTERM to `child` and waits up to `grace` for it to exit. Then,
/// whatever happened, SIGKILLs its process group, so that no child it started
/// outlives it. Returns the exit status if it exited within the grace period.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    if let Ok(Some(status)) = child.try_wait() {
        let _ = killpg(pid, Signal::SIGKILL);
        return Some(status);
    }
    let _ = kill(pid, Signal::SIGTERM);
    let exited = wait_for_exit(child, grace);
    let _ = killpg(pid, Signal::SIGKILL);
    if exited.is_none() {
        // Reap it, so the harness never leaves a zombie behind either.
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < timeout => thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Runs a command to completion, tagged and in its own process group, with
/// its output captured. Panics with whatever it printed when it runs longer
/// than `timeout` (after killing its process group).
pub fn run_bounded(mut command: Command, tag: &RunTag, timeout: Duration) -> Output {
    tag.apply(&mut command);
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {description}: {error}"));
    let stdout_reader = drain(child.stdout.take().expect("stdout is piped"));
    let stderr_reader = drain(child.stderr.take().expect("stderr is piped"));
    let exited = wait_for_exit(&mut child, timeout);
    if exited.is_none() {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }
    let stdout = stdout_reader.join().expect("stdout reader");
    let stderr = stderr_reader.join().expect("stderr reader");
    let Some(status) = exited else {
        panic!(
            "{description} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output { status, stdout, stderr }
}

/// Like [`run_bounded`], and also panics, with the output, unless the command
/// exits 0.
pub fn run_ok(command: Command, tag: &RunTag, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let output = run_bounded(command, tag, timeout);
    assert!(
        output.status.success(),
        "{description} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Reads a pipe to its end on a thread, so that neither pipe of a child can
/// fill up and stall it while the other is being read.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The last `lines` lines of a log file, for failure reports.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => return format!("(cannot read {}: {error})", path.display()),
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
