//! `sohofs nfs serve` for the NFS tests: started with the cluster's run tag
//! (so the harness ends it with the cluster even when a test fails), on a
//! free port of 127.0.0.1 or on a given one (a restart keeps the port), or on
//! a given address (the kernel-client test listens on its private veth).

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::STOP_TIMEOUT;
use crate::process::{is_alive, log_tail, terminate, wait_for_exit};
use crate::{sohofs_bin, Cluster};

/// From spawning the gateway to its readiness line.
pub const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What the gateway prints once it listens.
const GATEWAY_READY_WORDS: &str = "serving on";
const LOG_TAIL_LINES: usize = 60;

/// A running `sohofs nfs serve`.
pub struct Gateway {
    child: Option<Child>,
    listen: SocketAddr,
    log: PathBuf,
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port of `address` (a local address) that was free a moment ago.
pub fn free_port_on(address: IpAddr) -> u16 {
    let listener =
        TcpListener::bind((address, 0)).unwrap_or_else(|error| panic!("bind a free port on {address}: {error}"));
    listener.local_addr().expect("local address").port()
}

impl Gateway {
    /// The gateway exporting `/` on a free port.
    pub fn start(cluster: &Cluster) -> Gateway {
        Gateway::start_on(cluster, free_port(), None)
    }

    /// The gateway exporting `/` on `port`; with `address_space_bytes_max`,
    /// run under that RLIMIT_AS (`prlimit`), so that a runaway allocation
    /// fails inside the gateway instead of taking the machine's memory.
    pub fn start_on(cluster: &Cluster, port: u16, address_space_bytes_max: Option<u64>) -> Gateway {
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Gateway::start_listening(cluster, listen, address_space_bytes_max)
    }

    /// The gateway exporting `/`, listening on `listen` (any local address).
    pub fn start_listening(cluster: &Cluster, listen: SocketAddr, address_space_bytes_max: Option<u64>) -> Gateway {
        Gateway::start_with_args(cluster, listen, address_space_bytes_max, &[])
    }

    /// As [`Gateway::start_listening`], with more arguments for `nfs serve`
    /// (e.g. `--allow 10.0.0.0/8`).
    pub fn start_with_args(
        cluster: &Cluster,
        listen: SocketAddr,
        address_space_bytes_max: Option<u64>,
        extra_args: &[&str],
    ) -> Gateway {
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let log = cluster
            .scratch_dir("gateway")
            .join(format!("gateway-{}.log", STARTS.fetch_add(1, Ordering::Relaxed)));
        let log_file = File::create(&log).expect("create the gateway log");
        let mut command = match address_space_bytes_max {
            Some(bytes) => {
                let mut command = Command::new("prlimit");
                command.arg(format!("--as={bytes}")).arg("--").arg(sohofs_bin());
                command
            }
            None => Command::new(sohofs_bin()),
        };
        command
            .args(["nfs", "serve", "--config"])
            .arg(cluster.config_path())
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file);
        if std::env::var_os("SOHOFS_LOG").is_none() {
            command.env("SOHOFS_LOG", "info");
        }
        cluster.tag().apply(&mut command);
        let child = command.spawn().expect("spawn sohofs nfs serve");
        let mut gateway = Gateway {
            child: Some(child),
            listen,
            log,
        };
        let started = Instant::now();
        loop {
            let child = gateway.child.as_mut().expect("just set");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the gateway exited ({status}) before serving\n{}", gateway.log_tail());
            }
            let said = fs::read(&gateway.log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(GATEWAY_READY_WORDS));
            if said {
                return gateway;
            }
            assert!(
                started.elapsed() < GATEWAY_READY_TIMEOUT,
                "the gateway did not serve within {GATEWAY_READY_TIMEOUT:?}\n{}",
                gateway.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("gateway is running").id() as i32
    }

    /// Whether the gateway process is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("gateway is running");
        matches!(child.try_wait(), Ok(None)) && is_alive(child.id() as i32)
    }

    /// The libnfs URL of `path` (relative to the export root).
    pub fn url(&self, path: &str) -> String {
        format!(
            "nfs://{ip}/{path}?nfsport={port}&mountport={port}&version=3",
            ip = self.listen.ip(),
            port = self.listen.port()
        )
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_LINES)
    }

    /// SIGTERM; the gateway must exit 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("gateway is running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = wait_for_exit(&mut child, STOP_TIMEOUT);
        terminate(&mut child, Duration::ZERO);
        match status {
            Some(status) => assert!(status.success(), "gateway exited with {status}\n{}", self.log_tail()),
            None => panic!("gateway ignored SIGTERM for {STOP_TIMEOUT:?}\n{}", self.log_tail()),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
            if thread::panicking() {
                eprintln!("----- last lines of {} -----\n{}", self.log.display(), self.log_tail());
            }
        }
    }
}
