//! The fault-injection benchmark, as a cargo bench: runs
//! `sohofs bench faults --config benches/faults.toml` (a 6-node 4+2 cluster
//! of its own, faults injected; see control/src/bench.rs), which prints the
//! table and writes `benches/results/faults.json` and `faults.png`.
//!
//! Run: `cargo bench -p sohofs-benches --bench faults` as root (the disk-full
//! scenario mounts two small tmpfs). The sohofs binary is `SOHOFS_BIN`, else
//! `<target dir>/debug/sohofs`. `SOHOFS_BENCH_MIB` overrides the size.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and a
    // cluster run has no place in a test run.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("faults: skipped; run it with `cargo bench -p sohofs-benches --bench faults`");
        return;
    }
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = match std::env::var_os("SOHOFS_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("path of this bench");
            // <target>/<profile>/deps/faults-<hash>
            let target = exe
                .parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .expect("the bench runs from <target>/<profile>/deps");
            target.join("debug").join("sohofs")
        }
    };
    if !bin.is_file() {
        eprintln!(
            "faults: no sohofs binary at {}; run `cargo build -p sohofs-control` or set SOHOFS_BIN",
            bin.display()
        );
        std::process::exit(1);
    }
    println!("faults: {}", bin.display());
    let mut command = Command::new(&bin);
    command
        .current_dir(benches)
        .args(["bench", "faults", "--config", "faults.toml"]);
    if let Ok(mib) = std::env::var("SOHOFS_BENCH_MIB") {
        command.args(["--mib", &mib]);
    }
    let status = command.status().expect("run sohofs bench faults");
    std::process::exit(status.code().unwrap_or(1));
}
