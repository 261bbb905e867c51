//! Protected directories: this machine's key opener for the volume, and the
//! admin verbs that give a directory its own key and keep its envelopes in
//! step with LDAP.
//!
//! - `dir protect PATH --group DN` gives the empty directory PATH (a path
//!   inside the volume) a data key of its own, wrapped with age to the
//!   machines LDAP approves in DN.
//! - `dir show PATH [--json]` prints a directory's tier, its group and the
//!   machines its current key is wrapped to.
//! - `keyring sync [--dry-run]` reconciles every policy with LDAP: machines
//!   added get a stanza (the same key re-wrapped), machines removed (or whose
//!   published key changed) cause a new epoch with a new key, and then a
//!   rekey re-seals older data and destroys the older keys. Resumable.
//! - `keyring status [--json]` lists the policies with their epochs.
//!
//! Meta stores envelopes and never a plaintext key; the keys exist only in
//! the memory of machines whose identity opens them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use sohofs_format::{EnvelopeRecipient, KeyEnvelope, PolicyRecord, NAME_KEY_EPOCH, VOLUME_POLICY};
use sohofs_keyring::identity::{MachineIdentity, SSH_HOST_KEY_DEFAULT};
use sohofs_keyring::{
    open_envelope, seal_envelope, AuditAction, AuditEvent, AuditLog, AuditOutcome, Directory, Grantee, UnwrapError,
};
use sohofs_storage::codec::DataKey;
use sohofs_storage::keytable::{KeyEvent, KeyOpener};
use sohofs_storage::volume::{Attr, FileKind, Ino, RekeyProgress, Volume, ROOT_INO};

use crate::config::{folder_of, ClusterConfig};

#[derive(Subcommand)]
pub enum DirVerb {
    /// Give an empty directory its own key, wrapped to an LDAP group's machines.
    Protect {
        #[arg(long)]
        config: PathBuf,
        /// The LDAP group (DN) whose machines may read the directory.
        #[arg(long)]
        group: String,
        /// This machine's identity (default: the config's `identity`, else
        /// the SSH host key).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// The directory, as a path inside the volume (`/finance`).
        path: String,
    },
    /// Show a directory's tier and the machines approved for it.
    Show {
        #[arg(long)]
        config: PathBuf,
        /// This machine's identity (default: the config's `identity`, else
        /// the SSH host key); needed for a directory inside a protected one.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The directory, as a path inside the volume.
        path: String,
    },
}

pub async fn run_dir(verb: DirVerb) -> Result<()> {
    match verb {
        DirVerb::Protect {
            config,
            group,
            identity,
            path,
        } => protect(&config, &group, identity.as_deref(), &path).await,
        DirVerb::Show {
            config,
            identity,
            json,
            path,
        } => show(&config, identity.as_deref(), &path, json).await,
    }
}

/// The identity a client verb uses: `--identity`, else the config's
/// `identity`, else the SSH host key if this user can read it.
pub fn identity_path(config: &ClusterConfig, config_path: &Path, flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    if let Some(path) = &config.identity {
        return Some(folder_of(config_path).join(path));
    }
    let ssh = Path::new(SSH_HOST_KEY_DEFAULT);
    std::fs::File::open(ssh).ok().map(|_| ssh.to_path_buf())
}

/// Opens envelopes with one machine identity and writes what happens to
/// the audit log.
pub struct IdentityOpener {
    identity: MachineIdentity,
    host: String,
    audit: Option<AuditLog>,
}

impl IdentityOpener {
    pub fn load(path: &Path, audit: Option<AuditLog>) -> Result<IdentityOpener> {
        let identity = MachineIdentity::load(path).with_context(|| format!("machine identity {}", path.display()))?;
        Ok(IdentityOpener {
            identity,
            host: host_name(),
            audit,
        })
    }
}

impl KeyOpener for IdentityOpener {
    fn open(&self, envelope: &KeyEnvelope) -> Result<Option<DataKey>, String> {
        match open_envelope(envelope, &self.identity) {
            Ok(key) => Ok(Some(DataKey::from_bytes(*key.expose_bytes()))),
            Err(UnwrapError::NotRecipient) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    fn event(&self, event: KeyEvent) {
        let Some(audit) = &self.audit else { return };
        let (action, outcome, policy, epoch, group, message) = match event {
            KeyEvent::Unwrapped { policy, epoch, group } => (
                AuditAction::KeyUnwrap,
                AuditOutcome::Success,
                policy,
                epoch,
                group,
                "this machine opened a protected directory's key",
            ),
            KeyEvent::Denied { policy, epoch, group } => (
                AuditAction::AccessDenied,
                AuditOutcome::Failure,
                policy,
                epoch,
                group,
                "this machine is not approved for a protected directory's key",
            ),
        };
        let mut line = AuditEvent::new(action, outcome, &self.host, message);
        line.policy_id = Some(policy);
        line.key_epoch = Some(epoch);
        line.group = Some(group);
        if let Err(error) = audit.record(&line) {
            tracing::warn!(%error, "cannot write the audit log");
        }
    }
}

pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The audit log the config names, if any.
pub fn audit_log(config: &ClusterConfig, config_path: &Path) -> Result<Option<AuditLog>> {
    match &config.audit_log {
        Some(path) => {
            let path = folder_of(config_path).join(path);
            Ok(Some(
                AuditLog::open(&path).with_context(|| format!("audit log {}", path.display()))?,
            ))
        }
        None => Ok(None),
    }
}

/// The opener for a client verb, or none when the machine has no identity
/// (then every protected directory is EACCES and the rest works).
pub fn opener(config: &ClusterConfig, config_path: &Path, flag: Option<&Path>) -> Result<Option<Arc<dyn KeyOpener>>> {
    let Some(path) = identity_path(config, config_path, flag) else {
        return Ok(None);
    };
    let audit = audit_log(config, config_path)?;
    Ok(Some(Arc::new(IdentityOpener::load(&path, audit)?)))
}

/// Resolves a path inside the volume to its inode.
pub async fn resolve(volume: &Volume, path: &str) -> Result<Attr> {
    if !path.starts_with('/') {
        bail!("{path}: give the path inside the volume, starting with '/' (e.g. /finance)");
    }
    let mut attr = volume.getattr(ROOT_INO).await.context("read the volume's root")?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = volume
            .lookup(attr.ino, part.as_bytes())
            .await
            .with_context(|| format!("{path}: look up {part}"))?;
    }
    Ok(attr)
}

async fn ldap_directory(config: &ClusterConfig, config_path: &Path) -> Result<Directory> {
    let mut ldap = config.ldap.clone().with_context(|| {
        format!(
            "{}: no [ldap] table; protected directories need LDAP",
            config_path.display()
        )
    })?;
    ldap.resolve_paths(&folder_of(config_path));
    Directory::connect(&ldap).await.context("connect to LDAP")
}

/// Fresh data (epoch 1) and name keys for a directory about to be
/// protected, wrapped to `grantees` (meta numbers the policy).
fn new_policy_envelopes(grantees: &[Grantee]) -> Result<(KeyEnvelope, KeyEnvelope)> {
    let key = sohofs_keyring::DataKey::generate();
    let envelope = seal_envelope(0, 1, &key, grantees).context("wrap the directory key")?;
    let name_key = sohofs_keyring::DataKey::generate();
    let names = seal_envelope(0, NAME_KEY_EPOCH, &name_key, grantees).context("wrap the name key")?;
    Ok((envelope, names))
}

/// Machines (DNs) in `want` and not in `had`, and in `had` and not in
/// `want`, comparing each machine's full recipient text: a changed key is
/// a revoke of the old one.
fn recipient_changes<'a>(
    had: impl Iterator<Item = &'a EnvelopeRecipient>,
    want: &[Grantee],
) -> (Vec<String>, Vec<String>) {
    let had: BTreeSet<(String, String)> = had.map(|r| (r.machine.clone(), r.recipient.clone())).collect();
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|g| (g.machine.clone(), g.recipient.to_string()))
        .collect();
    let granted = want.difference(&had).map(|(m, _)| m.clone()).collect();
    let revoked = had.difference(&want).map(|(m, _)| m.clone()).collect();
    (granted, revoked)
}

/// The machines of `group` as grantees (one per published key).
async fn grantees(directory: &mut Directory, group: &str) -> Result<Vec<Grantee>> {
    let approval = directory
        .approved_machines(group)
        .await
        .with_context(|| format!("members of {group}"))?;
    for machine in &approval.unusable {
        eprintln!(
            "note: {} ({}) gets no key: {}",
            machine.name, machine.dn, machine.reason
        );
    }
    Ok(approval
        .approved
        .into_iter()
        .flat_map(|machine| {
            machine.recipients.into_iter().map(move |recipient| Grantee {
                machine: machine.dn.clone(),
                recipient,
            })
        })
        .collect())
}

fn audit(audit: &Option<AuditLog>, action: AuditAction, host: &str, policy: &PolicyRecord, epoch: u32, message: &str) {
    let Some(log) = audit else { return };
    let mut event = AuditEvent::new(action, AuditOutcome::Success, host, message);
    event.policy_id = Some(policy.id);
    event.key_epoch = Some(epoch);
    event.group = Some(policy.group.clone());
    if let Err(error) = log.record(&event) {
        tracing::warn!(%error, "cannot write the audit log");
    }
}

/// One audit line per machine granted and per machine revoked, at the
/// policy's current epoch.
fn audit_changes(
    log: &Option<AuditLog>,
    policy: &PolicyRecord,
    granted: &[String],
    revoked: &[String],
    revoke_message: &str,
) {
    for machine in granted {
        audit(
            log,
            AuditAction::KeyGrant,
            machine,
            policy,
            policy.current_epoch,
            "machine granted a directory key",
        );
    }
    for machine in revoked {
        audit(
            log,
            AuditAction::KeyRevoke,
            machine,
            policy,
            policy.current_epoch,
            revoke_message,
        );
    }
}

async fn protect(config_path: &Path, group: &str, identity: Option<&Path>, path: &str) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = crate::mount::connect(&config, config_path, identity).await?;
    let attr = resolve(&volume, path).await?;
    if attr.kind != FileKind::Dir {
        bail!("{path} is not a directory");
    }
    if attr.policy != VOLUME_POLICY {
        let root = volume.policies().await?.into_iter().find(|p| p.id == attr.policy);
        match root {
            Some(policy) if policy.dir == attr.ino => bail!("{path} is protected already (policy {})", policy.id),
            _ => bail!(
                "{path} is inside a protected directory (policy {}): it already has that directory's key",
                attr.policy
            ),
        }
    }
    let mut directory = ldap_directory(&config, config_path).await?;
    let grantees = grantees(&mut directory, group).await?;
    directory.close().await;
    if grantees.is_empty() {
        bail!("no machine of {group} has a usable key: nobody could read {path}");
    }
    let (envelope, names) = new_policy_envelopes(&grantees)?;
    let policy = volume
        .protect(attr.ino, group, envelope, names)
        .await
        .map_err(|error| match error {
            sohofs_storage::FsError::NotEmpty => {
                anyhow::anyhow!("{path} is not empty: protect an empty directory, then copy files into it")
            }
            sohofs_storage::FsError::Exists => anyhow::anyhow!("{path} is protected already"),
            other => anyhow::anyhow!("protect {path}: {other}"),
        })?;
    let log = audit_log(&config, config_path)?;
    for grantee in &grantees {
        audit(
            &log,
            AuditAction::KeyGrant,
            &grantee.machine,
            &policy,
            1,
            "machine granted a directory key",
        );
    }
    eprintln!(
        "{path} is protected (policy {}): its key is wrapped to {} machine key(s) of {group}",
        policy.id,
        grantees.len()
    );
    Ok(())
}

#[derive(Serialize)]
struct ShowJson {
    path: String,
    tier: &'static str,
    policy: Option<u64>,
    group: Option<String>,
    current_epoch: Option<u32>,
    live_epochs: Vec<u32>,
    machines: Vec<MachineJson>,
}

#[derive(Serialize)]
struct MachineJson {
    machine: String,
    recipient: String,
}

async fn show(config_path: &Path, identity: Option<&Path>, path: &str, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = crate::mount::connect(&config, config_path, identity).await?;
    let attr = resolve(&volume, path).await?;
    let mut document = ShowJson {
        path: path.to_string(),
        tier: "standard",
        policy: None,
        group: None,
        current_epoch: None,
        live_epochs: Vec::new(),
        machines: Vec::new(),
    };
    if attr.policy == VOLUME_POLICY {
        // The volume key's envelope, once a sync has made it.
        if let Some(envelope) = volume.envelopes(VOLUME_POLICY).await?.into_iter().next() {
            document.machines = machines_of(&envelope);
            document.group = config.ldap.as_ref().map(|l| l.cluster_group.clone());
        }
    } else {
        let policies = volume.policies().await?;
        let policy = policies
            .into_iter()
            .find(|p| p.id == attr.policy)
            .with_context(|| format!("{path} names policy {} that meta does not hold", attr.policy))?;
        let envelopes = volume.envelopes(policy.id).await?;
        let current = envelopes.iter().find(|e| e.epoch == policy.current_epoch);
        document.tier = "protected";
        document.machines = current.map(machines_of).unwrap_or_default();
        document.policy = Some(policy.id);
        document.group = Some(policy.group);
        document.current_epoch = Some(policy.current_epoch);
        document.live_epochs = policy.live_epochs;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("{}: {} tier", document.path, document.tier);
    if document.policy.is_none() && !document.machines.is_empty() {
        println!("the volume key is wrapped to:");
        for machine in &document.machines {
            println!("  {}  {}", machine.machine, machine.recipient);
        }
    }
    if let (Some(policy), Some(group), Some(epoch)) = (document.policy, &document.group, document.current_epoch) {
        println!(
            "policy {policy}, group {group}, key epoch {epoch} (live: {:?})",
            document.live_epochs
        );
        println!("approved machines:");
        for machine in &document.machines {
            println!("  {}  {}", machine.machine, machine.recipient);
        }
    }
    Ok(())
}

/// What `keyring sync` found (and did, unless `--dry-run`) for one policy.
#[derive(Serialize, Debug)]
pub struct PolicySync {
    policy: u64,
    group: String,
    granted: Vec<String>,
    revoked: Vec<String>,
    epoch_before: u32,
    /// The epoch after the sync (with `--dry-run`: the one it would make).
    epoch_after: u32,
    /// A rekey runs (or, with `--dry-run`, would run): a revoke, or older
    /// epochs left by an interrupted rekey.
    rekey_needed: bool,
    rekey: Option<RekeyJson>,
    /// Why this policy could not be synced (the others still were).
    error: Option<String>,
}

#[derive(Serialize, Debug)]
struct RekeyJson {
    files: u64,
    chunks_rekeyed: u64,
    epochs_destroyed: u64,
}

/// `keyring sync`: every policy against LDAP, then the rekeys. A policy
/// that fails is reported and the others are still synced; the verb then
/// exits non-zero.
pub async fn sync(config_path: &Path, identity: Option<&Path>, dry_run: bool, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = crate::mount::connect(&config, config_path, identity).await?;
    let mut directory = ldap_directory(&config, config_path).await?;
    let log = audit_log(&config, config_path)?;
    let has_identity = crate::protect::identity_path(&config, config_path, identity).is_some();
    let mut report = Vec::new();
    for policy in volume.policies().await? {
        let mut entry = PolicySync {
            policy: policy.id,
            group: policy.group.clone(),
            granted: Vec::new(),
            revoked: Vec::new(),
            epoch_before: policy.current_epoch,
            epoch_after: policy.current_epoch,
            rekey_needed: false,
            rekey: None,
            error: None,
        };
        let synced = sync_policy(
            &volume,
            &mut directory,
            &policy,
            &mut entry,
            &log,
            has_identity,
            dry_run,
            json,
        )
        .await;
        if let Err(error) = synced {
            entry.error = Some(format!("{error:#}"));
        }
        report.push(entry);
    }
    if let Some(group) = config.ldap.as_ref().map(|l| l.cluster_group.clone()) {
        let mut entry = PolicySync {
            policy: VOLUME_POLICY,
            group: group.clone(),
            granted: Vec::new(),
            revoked: Vec::new(),
            epoch_before: 0,
            epoch_after: 0,
            rekey_needed: false,
            rekey: None,
            error: None,
        };
        if let Err(error) = sync_volume_key(&volume, &mut directory, &log, dry_run, &mut entry).await {
            entry.error = Some(format!("{error:#}"));
        }
        report.push(entry);
    }
    directory.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for entry in &report {
            let verb = match (&entry.error, dry_run) {
                (Some(_), _) => "FAILED to",
                (None, true) => "would",
                (None, false) => "did",
            };
            if entry.policy == VOLUME_POLICY {
                println!(
                    "standard tier (the volume key, {}): {verb} grant {:?}, remove {:?}",
                    entry.group, entry.granted, entry.revoked
                );
                if let Some(error) = &entry.error {
                    println!("  FAILED: {error}");
                }
                continue;
            }
            println!(
                "policy {} ({}): {verb} grant {:?}, revoke {:?}; epoch {} -> {}{}",
                entry.policy,
                entry.group,
                entry.granted,
                entry.revoked,
                entry.epoch_before,
                entry.epoch_after,
                if dry_run && entry.rekey_needed {
                    "; would rekey"
                } else {
                    ""
                }
            );
            if let Some(rekey) = &entry.rekey {
                println!(
                    "  rekey: {} files, {} chunks re-sealed, {} old key(s) destroyed",
                    rekey.files, rekey.chunks_rekeyed, rekey.epochs_destroyed
                );
            }
            if let Some(error) = &entry.error {
                println!("  FAILED: {error}");
            }
        }
    }
    let failed: Vec<String> = report
        .iter()
        .filter_map(|e| {
            e.error
                .as_ref()
                .map(|error| format!("policy {} ({}): {error}", e.policy, e.group))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} policies could not be synced:\n{}",
            failed.len(),
            report.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// One policy of `keyring sync`; fills `entry` as it goes, so that what was
/// done before an error is reported.
#[allow(clippy::too_many_arguments)]
async fn sync_policy(
    volume: &Volume,
    directory: &mut Directory,
    policy: &PolicyRecord,
    entry: &mut PolicySync,
    log: &Option<AuditLog>,
    has_identity: bool,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let grantees = grantees(directory, &policy.group).await?;
    let envelopes = volume.envelopes(policy.id).await?;
    let current = envelopes
        .iter()
        .find(|e| e.epoch == policy.current_epoch)
        .with_context(|| {
            format!(
                "policy {} has no envelope for its epoch {}",
                policy.id, policy.current_epoch
            )
        })?;
    let (granted, revoked) = recipient_changes(current.recipients.iter(), &grantees);
    entry.granted = granted.clone();
    entry.revoked = revoked.clone();
    let older_left = policy.live_epochs.len() > 1;
    entry.rekey_needed = !revoked.is_empty() || older_left;
    if grantees.is_empty() && !current.recipients.is_empty() {
        bail!(
            "LDAP lists no machine of {} with a usable key; refusing to lock everyone out",
            policy.group
        );
    }
    if dry_run {
        if !revoked.is_empty() || !granted.is_empty() {
            // What the real run would fail on: re-wrapping needs the keys.
            held_key(volume, policy, NAME_KEY_EPOCH, has_identity)?;
        }
        if !revoked.is_empty() {
            entry.epoch_after = policy.current_epoch + 1;
        }
        return Ok(());
    }
    if !revoked.is_empty() || !granted.is_empty() {
        // The name key is not rotated (names would all be re-sealed):
        // it is re-wrapped to exactly the machines of the group.
        let name_key = held_key(volume, policy, NAME_KEY_EPOCH, has_identity)?;
        let names = seal_envelope(policy.id, NAME_KEY_EPOCH, &name_key, &grantees).context("re-wrap the name key")?;
        volume.put_envelope(names, policy.current_epoch).await?;
    }
    if !revoked.is_empty() {
        // A new key: a removed machine must not read what is written from now on.
        let key = sohofs_keyring::DataKey::generate();
        let next = policy.current_epoch + 1;
        let envelope = seal_envelope(policy.id, next, &key, &grantees).context("wrap the new key")?;
        let updated = volume.put_envelope(envelope, policy.current_epoch).await?;
        entry.epoch_after = updated.current_epoch;
        audit_changes(log, &updated, &granted, &revoked, "machine's key revoked: new epoch");
    } else if !granted.is_empty() {
        // The same key, wrapped to one more machine: needs the key, so
        // this machine must hold it.
        let key = held_key(volume, policy, policy.current_epoch, has_identity)?;
        let envelope = seal_envelope(policy.id, policy.current_epoch, &key, &grantees).context("re-wrap the key")?;
        let updated = volume.put_envelope(envelope, policy.current_epoch).await?;
        audit_changes(log, &updated, &granted, &[], "");
    }
    if entry.rekey_needed {
        entry.rekey = Some(rekey(volume, policy, log, json).await?);
    }
    Ok(())
}

/// The standard tier: the volume key wrapped to the machines of the cluster
/// group, so that a machine of the group mounts without the key file. The
/// volume key is never rotated (that would re-seal the whole volume): a
/// machine taken out of the group loses its stanza, but one that kept the
/// key could still read standard-tier data it can reach. Data that must be
/// revocable belongs in a protected directory.
async fn sync_volume_key(
    volume: &Volume,
    directory: &mut Directory,
    log: &Option<AuditLog>,
    dry_run: bool,
    entry: &mut PolicySync,
) -> Result<()> {
    let group = entry.group.clone();
    let grantees = grantees(directory, &group).await?;
    let envelopes = volume.envelopes(VOLUME_POLICY).await?;
    (entry.granted, entry.revoked) = recipient_changes(envelopes.iter().flat_map(|e| e.recipients.iter()), &grantees);
    if dry_run || (entry.granted.is_empty() && entry.revoked.is_empty()) {
        return Ok(());
    }
    if grantees.is_empty() {
        eprintln!("note: no machine of {group} has a usable key; the volume key's envelope is left as it is");
        return Ok(());
    }
    let key = sohofs_keyring::DataKey::from_bytes(*volume.volume_key().as_bytes());
    let envelope = seal_envelope(VOLUME_POLICY, 0, &key, &grantees).context("wrap the volume key")?;
    let record = volume.put_envelope(envelope, 0).await?;
    for machine in &entry.granted {
        audit(
            log,
            AuditAction::KeyGrant,
            machine,
            &record,
            0,
            "machine granted the volume key",
        );
    }
    for machine in &entry.revoked {
        audit(
            log,
            AuditAction::KeyRevoke,
            machine,
            &record,
            0,
            "machine's stanza of the volume key removed (the volume key is not rotated)",
        );
    }
    Ok(())
}

/// A key of a policy (epoch 0: the name key), from this machine's key table.
fn held_key(volume: &Volume, policy: &PolicyRecord, epoch: u32, has_identity: bool) -> Result<sohofs_keyring::DataKey> {
    match volume.held_key(policy.id, epoch) {
        Some(key) => Ok(sohofs_keyring::DataKey::from_bytes(*key.as_bytes())),
        None if has_identity => bail!(
            "this machine is not approved for policy {} ({}): run sync on a machine that is approved for it",
            policy.id,
            policy.group
        ),
        None => bail!(
            "granting needs the key: give --identity of a machine approved for {}",
            policy.group
        ),
    }
}

async fn rekey(volume: &Volume, policy: &PolicyRecord, log: &Option<AuditLog>, json: bool) -> Result<RekeyJson> {
    let host = host_name();
    audit(
        log,
        AuditAction::RekeyStart,
        &host,
        policy,
        policy.current_epoch,
        "rekey started",
    );
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("rekey policy {msg} [{bar:30}] {pos}/{len} files")
                .expect("valid progress template"),
        );
        bar.set_message(format!("{}", policy.id));
        bar
    };
    let show = |progress: RekeyProgress| {
        bar.set_length(progress.files_total);
        bar.set_position(progress.files_done);
    };
    let done = volume
        .rekey(policy.id, &show)
        .await
        .with_context(|| format!("rekey policy {} (run `sohofs keyring sync` again to resume)", policy.id))?;
    bar.finish_and_clear();
    audit(
        log,
        AuditAction::RekeyFinish,
        &host,
        policy,
        policy.current_epoch,
        "rekey finished: older keys destroyed",
    );
    Ok(RekeyJson {
        files: done.files_total,
        chunks_rekeyed: done.chunks_rekeyed,
        epochs_destroyed: done.epochs_destroyed,
    })
}

#[derive(Serialize)]
struct StatusJson {
    /// "protected", or "standard" for the volume key's envelope (policy 0).
    tier: &'static str,
    policy: u64,
    group: String,
    dir: Ino,
    current_epoch: u32,
    live_epochs: Vec<u32>,
    /// Older epochs left: a rekey has work to do.
    rekey_pending: bool,
    machines: Vec<MachineJson>,
}

/// `keyring status`: policies, groups, approved machines, epochs.
pub async fn status(config_path: &Path, identity: Option<&Path>, json: bool) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = crate::mount::connect(&config, config_path, identity).await?;
    let mut out = Vec::new();
    for policy in volume.policies().await? {
        let envelopes = volume.envelopes(policy.id).await?;
        let machines = envelopes
            .iter()
            .find(|e| e.epoch == policy.current_epoch)
            .map(machines_of)
            .unwrap_or_default();
        out.push(StatusJson {
            tier: "protected",
            policy: policy.id,
            group: policy.group,
            dir: policy.dir,
            current_epoch: policy.current_epoch,
            rekey_pending: policy.live_epochs.len() > 1,
            live_epochs: policy.live_epochs,
            machines,
        });
    }
    // The standard tier, once a sync has wrapped the volume key.
    if let Some(envelope) = volume.envelopes(VOLUME_POLICY).await?.into_iter().next() {
        out.push(StatusJson {
            tier: "standard",
            policy: VOLUME_POLICY,
            group: config
                .ldap
                .as_ref()
                .map(|l| l.cluster_group.clone())
                .unwrap_or_default(),
            dir: ROOT_INO,
            current_epoch: 0,
            live_epochs: vec![0],
            rekey_pending: false,
            machines: machines_of(&envelope),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.iter().all(|p| p.tier != "protected") {
        println!("no protected directories");
    }
    for policy in &out {
        if policy.tier == "standard" {
            println!(
                "standard tier: the volume key is wrapped to {} machine key(s) of {}",
                policy.machines.len(),
                policy.group
            );
            for machine in &policy.machines {
                println!("  {}", machine.machine);
            }
            continue;
        }
        println!(
            "policy {} (dir inode {}): group {}, epoch {}{}",
            policy.policy,
            policy.dir,
            policy.group,
            policy.current_epoch,
            if policy.rekey_pending {
                let older: Vec<u32> = policy
                    .live_epochs
                    .iter()
                    .copied()
                    .filter(|e| *e != policy.current_epoch)
                    .collect();
                format!(", older epochs {older:?} wait for a rekey (run `sohofs keyring sync`)")
            } else {
                String::new()
            }
        );
        for machine in &policy.machines {
            println!("  {}", machine.machine);
        }
    }
    Ok(())
}

fn machines_of(envelope: &KeyEnvelope) -> Vec<MachineJson> {
    envelope
        .recipients
        .iter()
        .map(|r| MachineJson {
            machine: r.machine.clone(),
            recipient: r.recipient.clone(),
        })
        .collect()
}

#[derive(Subcommand)]
pub enum HomeVerb {
    /// Make a protected home directory for each posixAccount of an LDAP
    /// group (owner uidNumber/gidNumber, mode 0700), readable only by the
    /// machines of another group. Running it again changes nothing.
    Sync {
        #[arg(long)]
        config: PathBuf,
        /// The LDAP group of the users (groupOfNames, posixGroup or memberOf).
        #[arg(long)]
        group: String,
        /// The LDAP group of the machines that may read the homes.
        #[arg(long)]
        machines_group: String,
        /// The folder of the volume that holds the homes.
        #[arg(long, default_value = "/home")]
        root: String,
        /// This machine's identity (default: the config's `identity`, else
        /// the SSH host key).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Say what would be made; make nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize, Default)]
struct HomeSyncJson {
    created: Vec<String>,
    unchanged: Vec<String>,
    /// Homes that exist but differ from what LDAP says (left as they are).
    differing: Vec<String>,
    /// LDAP members that get no home, and why.
    skipped: Vec<String>,
}

pub async fn run_home(verb: HomeVerb) -> Result<()> {
    let HomeVerb::Sync {
        config: config_path,
        group,
        machines_group,
        root,
        identity,
        dry_run,
        json,
    } = verb;
    let config = ClusterConfig::load(&config_path)?;
    let volume = crate::mount::connect(&config, &config_path, identity.as_deref()).await?;
    let mut directory = ldap_directory(&config, &config_path).await?;
    let users = directory
        .posix_users(&group)
        .await
        .with_context(|| format!("users of {group}"))?;
    let machines = grantees(&mut directory, &machines_group).await?;
    directory.close().await;
    if machines.is_empty() {
        bail!("no machine of {machines_group} has a usable key: nobody could read the homes");
    }
    let mut report = HomeSyncJson::default();
    for user in &users.unusable {
        report.skipped.push(format!("{}: {}", user.dn, user.reason));
    }
    if !root.starts_with('/') {
        bail!("--root {root}: give the path inside the volume, starting with '/' (e.g. /home)");
    }
    let root_attr = match resolve(&volume, &root).await {
        Ok(attr) => attr,
        Err(_) if dry_run => {
            let parent = resolve(&volume, parent_of(&root)).await?;
            if parent.policy != VOLUME_POLICY {
                bail!("{root} would be inside a protected directory: homes are protected on their own, give a --root in the standard tier");
            }
            report
                .created
                .extend(users.users.iter().map(|u| format!("{root}/{}", u.uid)));
            return print_home_report(&report, json, dry_run);
        }
        Err(_) => {
            let parent = resolve(&volume, parent_of(&root)).await?;
            if parent.policy != VOLUME_POLICY {
                bail!("{root} would be inside a protected directory: homes are protected on their own, give a --root in the standard tier");
            }
            let name = root.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            volume
                .mkdir(parent.ino, name.as_bytes(), 0o755, 0, 0)
                .await
                .with_context(|| format!("make {root}"))?
        }
    };
    if root_attr.policy != VOLUME_POLICY {
        bail!("{root} is inside a protected directory: homes are protected on their own, give a --root in the standard tier");
    }
    let log = audit_log(&config, &config_path)?;
    for user in &users.users {
        let path = format!("{}/{}", root.trim_end_matches('/'), user.uid);
        let existing = match volume.lookup(root_attr.ino, user.uid.as_bytes()).await {
            Ok(home) => Some(home),
            Err(sohofs_storage::FsError::NotFound) => None,
            Err(error) => return Err(anyhow::anyhow!("look up {path}: {error}")),
        };
        let owned_right = |home: &Attr| {
            home.kind == FileKind::Dir
                && home.uid == user.uid_number
                && home.gid == user.gid_number
                && home.perm & 0o7777 == 0o700
        };
        let home = match existing {
            Some(home) if owned_right(&home) && home.policy != VOLUME_POLICY => {
                report.unchanged.push(path);
                continue;
            }
            // Made by a run that stopped before protecting it: finish it.
            Some(home) if owned_right(&home) => home,
            Some(_) => {
                report.differing.push(path);
                continue;
            }
            None if dry_run => {
                report.created.push(path);
                continue;
            }
            None => volume
                .mkdir(
                    root_attr.ino,
                    user.uid.as_bytes(),
                    0o700,
                    user.uid_number,
                    user.gid_number,
                )
                .await
                .with_context(|| format!("make {path}"))?,
        };
        if dry_run {
            report.created.push(path);
            continue;
        }
        let (envelope, names) = new_policy_envelopes(&machines)?;
        match volume.protect(home.ino, &machines_group, envelope, names).await {
            Ok(policy) => {
                for machine in &machines {
                    audit(
                        &log,
                        AuditAction::KeyGrant,
                        &machine.machine,
                        &policy,
                        1,
                        "machine granted a home's key",
                    );
                }
                report.created.push(path);
            }
            // Someone put files in it before it was protected.
            Err(sohofs_storage::FsError::NotEmpty) => report.differing.push(path),
            Err(error) => return Err(anyhow::anyhow!("protect {path}: {error}")),
        }
    }
    print_home_report(&report, json, dry_run)
}

fn parent_of(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(at) => &path[..at],
    }
}

fn print_home_report(report: &HomeSyncJson, json: bool, dry_run: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let made = if dry_run { "would create" } else { "created" };
    for path in &report.created {
        println!("{made} {path}");
    }
    for path in &report.unchanged {
        println!("unchanged {path}");
    }
    for path in &report.differing {
        println!("differs from LDAP (left as is): {path}");
    }
    for reason in &report.skipped {
        println!("skipped {reason}");
    }
    Ok(())
}
