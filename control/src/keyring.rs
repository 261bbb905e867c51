//! `sohofs keyring`: this machine's keyring and what LDAP approves.
//!
//! - `init [--identity FILE] [--json]` prints the recipient to publish in
//!   LDAP. With `--identity`, it makes an age identity there (0600) unless
//!   one exists (never overwriting a file); without, it reads the SSH host
//!   ed25519 key, the default identity, and makes nothing.
//! - `check --config F [--identity F] [--json]` binds to the `[ldap]` of the
//!   cluster config and lists the machines of `cluster_group`, and those it
//!   cannot use; with `--identity`, also whether that machine is approved.
//!   Being listed or not is a result, not a failure: exit 0 either way.
//!
//! stdout carries the result (the recipient, the listing); stderr says what
//! was done. Exit codes: 0 done, 1 failed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use sohofs_keyring::identity::{init_identity_file, InitOutcome, MachineIdentity, SSH_HOST_KEY_DEFAULT};
use sohofs_keyring::{Approval, Directory};

use crate::config::{folder_of, ClusterConfig};

#[derive(Subcommand)]
pub enum KeyringVerb {
    /// Make this machine's age identity if needed; print its recipient.
    Init {
        /// An age identity file to use, made if missing (default: the SSH
        /// host key /etc/ssh/ssh_host_ed25519_key, never made by sohofs).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bind to LDAP and list the machines approved for the cluster.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Also say whether the machine of this identity (age identity file
        /// or SSH host key) is approved.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reconcile every protected directory's key with LDAP: grant new
    /// members, revoke removed ones (new key epoch, then a resumable rekey).
    Sync {
        #[arg(long)]
        config: PathBuf,
        /// This machine's identity: needed to re-wrap a key to new members
        /// (default: the config's `identity`, else the SSH host key).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the protected directories' policies: group, machines, epochs.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// This machine's identity, to open the volume key on a machine
        /// without `volume.key` (default: the config's `identity`, else the
        /// SSH host key).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(verb: KeyringVerb) -> Result<()> {
    match verb {
        KeyringVerb::Init { identity, json } => init(identity.as_deref(), json),
        KeyringVerb::Check { config, identity, json } => check(&config, identity.as_deref(), json).await,
        KeyringVerb::Sync {
            config,
            identity,
            dry_run,
            json,
        } => crate::protect::sync(&config, identity.as_deref(), dry_run, json).await,
        KeyringVerb::Status { config, identity, json } => {
            crate::protect::status(&config, identity.as_deref(), json).await
        }
    }
}

#[derive(Serialize)]
struct InitJson<'a> {
    identity: &'a Path,
    kind: &'static str,
    recipient: String,
    created: bool,
}

fn init(identity_path: Option<&Path>, json: bool) -> Result<()> {
    let (path, identity, created) = match identity_path {
        Some(path) => {
            let (identity, outcome) = init_identity_file(path).context("age identity")?;
            (path, identity, outcome == InitOutcome::Created)
        }
        None => {
            let path = Path::new(SSH_HOST_KEY_DEFAULT);
            if !path.exists() {
                bail!(
                    "no SSH host key at {SSH_HOST_KEY_DEFAULT}; make an age identity with \
                     `sohofs keyring init --identity FILE`"
                );
            }
            (path, MachineIdentity::load(path).context("SSH host key")?, false)
        }
    };
    let recipient = identity.recipient().to_string();
    if json {
        let document = InitJson {
            identity: path,
            kind: identity.kind(),
            recipient,
            created,
        };
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        let done = if created { "created" } else { "using existing" };
        eprintln!(
            "{done} {} identity {}; publish this recipient on the machine's LDAP entry:",
            identity.kind(),
            path.display()
        );
        println!("{recipient}");
    }
    Ok(())
}

#[derive(Serialize)]
struct RecipientJson {
    kind: &'static str,
    recipient: String,
    fingerprint: String,
}

#[derive(Serialize)]
struct ApprovedJson {
    dn: String,
    name: String,
    recipients: Vec<RecipientJson>,
}

#[derive(Serialize)]
struct UnusableJson {
    dn: String,
    name: String,
    reason: String,
}

/// Whether the machine of `--identity` is among the approved.
#[derive(Serialize)]
struct ThisMachineJson {
    recipient: String,
    /// The name of the approved entry publishing this recipient.
    approved_as: Option<String>,
}

#[derive(Serialize)]
struct CheckJson {
    url: String,
    group: String,
    approved: Vec<ApprovedJson>,
    unusable: Vec<UnusableJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    this_machine: Option<ThisMachineJson>,
}

fn check_json(url: &str, group: &str, approval: Approval) -> CheckJson {
    CheckJson {
        url: url.to_string(),
        group: group.to_string(),
        approved: approval
            .approved
            .into_iter()
            .map(|machine| ApprovedJson {
                dn: machine.dn,
                name: machine.name,
                recipients: machine
                    .recipients
                    .iter()
                    .map(|recipient| RecipientJson {
                        kind: recipient.kind(),
                        recipient: recipient.to_string(),
                        fingerprint: recipient.fingerprint(),
                    })
                    .collect(),
            })
            .collect(),
        unusable: approval
            .unusable
            .into_iter()
            .map(|machine| UnusableJson {
                dn: machine.dn,
                name: machine.name,
                reason: machine.reason,
            })
            .collect(),
        this_machine: None,
    }
}

async fn check(config_path: &Path, identity_path: Option<&Path>, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    // Read before binding, so that a bad identity fails without LDAP.
    let identity = identity_path
        .map(|path| MachineIdentity::load(path).with_context(|| format!("identity {}", path.display())))
        .transpose()?;
    let Some(mut ldap) = config.ldap else {
        bail!("{} has no [ldap] table", config_path.display());
    };
    ldap.resolve_paths(&folder_of(config_path));
    let mut directory = Directory::connect(&ldap)
        .await
        .with_context(|| format!("bind to {}", ldap.url))?;
    let approval = directory
        .cluster_machines()
        .await
        .with_context(|| format!("list the machines of {}", ldap.cluster_group))?;
    directory.close().await;
    let this_machine = identity.map(|identity| {
        let recipient = identity.recipient();
        let approved_as = approval
            .approved
            .iter()
            .find(|machine| machine.recipients.contains(&recipient))
            .map(|machine| machine.name.clone());
        ThisMachineJson {
            recipient: recipient.to_string(),
            approved_as,
        }
    });
    let mut report = check_json(&ldap.url, &ldap.cluster_group, approval);
    report.this_machine = this_machine;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} machines approved by {}:", report.approved.len(), report.group);
    for machine in &report.approved {
        for recipient in &machine.recipients {
            println!(
                "  {:<24} {:<11} {}  {}",
                machine.name, recipient.kind, recipient.fingerprint, machine.dn
            );
        }
    }
    if !report.unusable.is_empty() {
        println!("{} members that get no key:", report.unusable.len());
        for machine in &report.unusable {
            println!("  {:<24} {}  {}", machine.name, machine.reason, machine.dn);
        }
    }
    if let Some(this_machine) = &report.this_machine {
        match &this_machine.approved_as {
            Some(name) => println!("this machine is approved as {name}"),
            None => println!(
                "this machine is not approved: no approved entry publishes {}",
                this_machine.recipient
            ),
        }
    }
    Ok(())
}
