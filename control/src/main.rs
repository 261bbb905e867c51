//! `sohofs`: the one binary. Services (`meta serve`, `node serve`), the
//! client mount, the NFS gateway (`nfs serve`), the local dev cluster (`up`)
//! and the admin verbs.
//!
//! Exit codes: 0 success, 1 failure (the message says what), 2 bad usage.

mod bench;
mod config;
mod debug;
mod keyring;
mod mount;
mod nfs;
mod node;
mod protect;
mod scrub;
mod services;
mod status;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sohofs",
    version,
    about = "An erasure-coded, encrypted volume pooled from office workstations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (meta + N nodes) and mount it; stays in the foreground.
    Up(up::UpArgs),
    /// Mount the volume of a running cluster as another client.
    Mount {
        /// The cluster config (DIR/sohofs.toml).
        #[arg(long)]
        config: PathBuf,
        /// This machine's identity for protected directories (age
        /// identity file or SSH ed25519 key; default: the config's
        /// `identity`, else the SSH host key).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Where to mount.
        mountpoint: PathBuf,
    },
    /// The NFSv3 gateway.
    Nfs {
        #[command(subcommand)]
        verb: nfs::NfsVerb,
    },
    /// Show nodes and volume health.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every shard on every node and repair the corrupt ones;
    /// prints what was checked, found and repaired when done.
    Scrub {
        #[arg(long)]
        config: PathBuf,
        /// At full speed, not at the nodes' scrub bandwidth.
        #[arg(long)]
        now: bool,
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Read-only views of meta's records (placement, never data).
    Debug {
        #[command(subcommand)]
        verb: debug::DebugVerb,
    },
    /// Protected directories: give one its own key, or show a directory's tier.
    Dir {
        #[command(subcommand)]
        verb: protect::DirVerb,
    },
    /// Home directories for an LDAP group's users, each with its own key.
    Home {
        #[command(subcommand)]
        verb: protect::HomeVerb,
    },
    /// This machine's keyring and LDAP approval.
    Keyring {
        #[command(subcommand)]
        verb: keyring::KeyringVerb,
    },
    /// The metadata service.
    Meta {
        #[command(subcommand)]
        verb: services::MetaVerb,
    },
    /// Storage nodes: serve one, or add, drain, remove and list them.
    Node {
        #[command(subcommand)]
        verb: node::NodeVerb,
    },
    /// Benchmarks that start their own cluster.
    Bench {
        #[command(subcommand)]
        verb: bench::BenchVerb,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOHOFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// glibc serves allocations above its mmap threshold (128 KiB at first) with
/// fresh mappings and unmaps them on free, so every 4 MiB chunk buffer would
/// pay its page faults again. Keeping them on the heap measured twice as fast
/// for sealing a chunk (benches/README.md).
fn keep_chunk_buffers_on_the_heap() {
    const CHUNK_BUFFER_BYTES_MAX: libc::c_int = 64 * 1024 * 1024;
    // SAFETY: mallopt only changes allocator tunables; it is called before any
    // other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, CHUNK_BUFFER_BYTES_MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * CHUNK_BUFFER_BYTES_MAX);
    }
}

/// A reporting verb whose reader went away (`sohofs status | head -1`) ends
/// quietly, as other command-line tools do, instead of panicking in
/// `println!`. Services keep Rust's ignored SIGPIPE: their sockets get EPIPE.
fn end_quietly_when_the_reader_goes(command: &Command) {
    let reports = matches!(
        command,
        Command::Status { .. }
            | Command::Scrub { .. }
            | Command::Debug { .. }
            | Command::Keyring { .. }
            | Command::Dir { .. }
    ) || matches!(command, Command::Node { verb } if !matches!(verb, node::NodeVerb::Serve(_)));
    if reports {
        // SAFETY: restoring a signal's default disposition before any other
        // thread exists.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

fn main() {
    keep_chunk_buffers_on_the_heap();
    let cli = Cli::parse();
    end_quietly_when_the_reader_goes(&cli.command);
    init_logging();
    // Failpoints are armed before anything runs; an entry scoped to `node-3`
    // acts only in node 3 (see sohofs_storage::fault).
    let scope = match &cli.command {
        Command::Node {
            verb: node::NodeVerb::Serve(args),
        } => format!("node-{}", args.id),
        Command::Meta { .. } => "meta".to_string(),
        _ => "client".to_string(),
    };
    sohofs_storage::fault::set_scope(scope);
    if let Err(error) = sohofs_storage::fault::init_from_env() {
        eprintln!("sohofs: {error}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sohofs: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Mount {
                config,
                identity,
                mountpoint,
            } => mount::run(&config, &mountpoint, identity.as_deref()).await,
            Command::Dir { verb } => protect::run_dir(verb).await,
            Command::Home { verb } => protect::run_home(verb).await,
            Command::Nfs { verb } => nfs::run(verb).await,
            Command::Status { config, json } => status::run(&config, json).await,
            Command::Scrub { config, now, json } => scrub::run(&config, now, json).await,
            Command::Debug { verb } => debug::run(verb).await,
            Command::Keyring { verb } => keyring::run(verb).await,
            Command::Meta { verb } => services::meta(verb).await,
            Command::Node { verb } => node::run(verb).await,
            Command::Bench { verb } => bench::run(verb).await,
        }
    });
    // Background tasks (node refresh, read-ahead) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(error) = result {
        eprintln!("sohofs: {error:#}");
        std::process::exit(1);
    }
}
