//! Deadlines. Every wait in an end-to-end test has one, because a hung FUSE
//! request or a cluster that never converges must fail the test, not stall CI.

use std::panic;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_until`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Probes until `probe` returns `Ok`, and returns its value. `Err` carries a
/// description of what was seen instead, which the panic at the deadline
/// repeats so that a failure says how far the system got.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) if started.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting until {what}; last seen: {seen}")
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Runs `work` on its own thread and returns its result, or panics when it
/// takes longer than `timeout`. Used for file system calls on a mount, which
/// can block in the kernel for as long as the FUSE server does not answer.
/// On timeout the thread is left behind; it ends when the test's cluster is
/// torn down, since the kernel fails the pending request once the mount goes.
pub fn bounded<T: Send + 'static>(what: &str, timeout: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    let worker = thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            // The receiver may be gone after a timeout; nothing to report then.
            let _ = sender.send(work());
        })
        .expect("spawn a worker thread");
    match receiver.recv_timeout(timeout) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {timeout:?}")
        }
        // The sender was dropped without sending: the work panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(payload) => panic::resume_unwind(payload),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
    }
}
