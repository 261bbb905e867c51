//! `sohofs nfs serve`: an NFSv3 gateway to the volume of a running cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sohofs_nfs::{Gateway, GatewayOptions};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;

/// The standard NFS port; binding it needs root.
const NFS_PORT_DEFAULT: &str = "127.0.0.1:2049";

#[derive(Subcommand)]
pub enum NfsVerb {
    /// Serve the volume (or a directory of it) over NFSv3 until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// The cluster config (DIR/sohofs.toml).
    #[arg(long)]
    config: PathBuf,
    /// Address for MOUNT, NFS and portmap (one port for all three).
    #[arg(long, default_value = NFS_PORT_DEFAULT)]
    listen: SocketAddr,
    /// The directory of the volume to export; clients mount it by this path.
    #[arg(long, default_value = "/")]
    export: String,
    /// Let uid 0 act as root instead of mapping it to 65534.
    #[arg(long)]
    no_root_squash: bool,
    /// A client network that may connect (e.g. 192.168.1.0/24 or
    /// 10.0.0.7/32); repeat for more. Without it: loopback and the private
    /// ranges (10/8, 172.16/12, 192.168/16, fc00::/7, fe80::/10).
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<ipnet::IpNet>,
    /// This machine's identity for protected directories (age identity file
    /// or SSH ed25519 key; default: the config's `identity`, else the SSH
    /// host key).
    #[arg(long)]
    identity: Option<PathBuf>,
}

pub async fn run(verb: NfsVerb) -> Result<()> {
    match verb {
        NfsVerb::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = ClusterConfig::load(&args.config)?;
    let volume = crate::mount::connect(&config, &args.config, args.identity.as_deref()).await?;
    let options = GatewayOptions {
        listen: args.listen,
        export: args.export,
        root_squash: !args.no_root_squash,
        allowed_clients: if args.allow.is_empty() {
            sohofs_nfs::default_allowed_clients()
        } else {
            args.allow
        },
    };
    let gateway = Gateway::bind(volume, &options).await.context("start the NFS gateway")?;
    println!(
        "sohofs: NFSv3 export {} serving on {} to {} (root squash {}); stop with SIGTERM",
        gateway.export_path(),
        gateway.local_addr(),
        options
            .allowed_clients
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if options.root_squash { "on" } else { "off" }
    );
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(gateway.serve(shutdown.clone()));
    crate::up::terminated().await;
    shutdown.cancel();
    served.await.context("NFS gateway task")?.context("serve NFS")?;
    Ok(())
}
