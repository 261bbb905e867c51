//! `sohofs mount`: a client of a running cluster, mounted with FUSE.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sohofs_format::VOLUME_POLICY;
use sohofs_storage::codec::DataKey;
use sohofs_storage::keytable::{KeyEvent, KeyOpener};
use sohofs_storage::volume::{volume_envelope, Volume, VolumeConfig};

use crate::config::{folder_of, ClusterConfig};

/// How long an unmount may wait for busy files before it detaches lazily.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects as a client. `identity` (else the config's `identity`, else the
/// SSH host key when readable) opens protected directories' keys; without
/// any, those directories are EACCES and the rest of the volume works.
///
/// The volume key comes from the config's key file when this machine has it
/// (the machine that ran `up`), else from the envelope `keyring sync` wraps
/// to the LDAP cluster group, opened with the identity.
pub async fn connect(config: &ClusterConfig, config_path: &Path, identity: Option<&Path>) -> Result<Volume> {
    let opener = crate::protect::opener(config, config_path, identity)?;
    let key_file = folder_of(config_path).join(&config.data_key_file);
    let data_key = if key_file.exists() {
        config.data_key(config_path)?
    } else {
        volume_key_from_envelope(config, &key_file, opener.as_deref()).await?
    };
    Volume::connect(VolumeConfig {
        meta_addrs: config.meta.clone(),
        data_key,
        opener,
    })
    .await
    .with_context(|| format!("connect to meta at {}", config.meta.join(", ")))
}

/// The volume key, unwrapped from meta's envelope with this machine's
/// identity (a machine of the cluster group without the key file).
async fn volume_key_from_envelope(
    config: &ClusterConfig,
    key_file: &Path,
    opener: Option<&dyn KeyOpener>,
) -> Result<DataKey> {
    let envelope = volume_envelope(&config.meta)
        .await
        .with_context(|| format!("connect to meta at {} for the volume key", config.meta.join(", ")))?;
    let Some(envelope) = envelope else {
        bail!(
            "no volume key: {} is missing and the volume key has not been wrapped to the LDAP cluster group \
             (run `sohofs keyring sync` on the machine that has the key file)",
            key_file.display()
        );
    };
    let Some(opener) = opener else {
        bail!(
            "no volume key: {} is missing and this machine has no identity to open the volume key's envelope \
             (give --identity or the config's `identity`)",
            key_file.display()
        );
    };
    match opener.open(&envelope) {
        Ok(Some(key)) => {
            opener.event(KeyEvent::Unwrapped {
                policy: VOLUME_POLICY,
                epoch: 0,
                group: cluster_group(config),
            });
            Ok(key)
        }
        Ok(None) => {
            opener.event(KeyEvent::Denied {
                policy: VOLUME_POLICY,
                epoch: 0,
                group: cluster_group(config),
            });
            bail!(
            "this machine is not approved for the volume: its identity is not among the recipients of the volume key \
             (is it in the LDAP cluster group, and has `sohofs keyring sync` run since?)"
            )
        }
        Err(error) => bail!("the volume key's envelope does not open: {error}"),
    }
}

fn cluster_group(config: &ClusterConfig) -> String {
    config
        .ldap
        .as_ref()
        .map(|l| l.cluster_group.clone())
        .unwrap_or_default()
}

/// Checks that `mountpoint` is an empty folder that nothing is mounted on,
/// creating it (but not its parents) when missing.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir(mountpoint)
                .with_context(|| format!("create mount point {}", mountpoint.display()));
        }
        Err(error) => anyhow::bail!("mount point {}: {error}", mountpoint.display()),
        Ok(meta) if !meta.is_dir() => anyhow::bail!("mount point {} is not a directory", mountpoint.display()),
        Ok(_) => {}
    }
    let canonical = std::fs::canonicalize(mountpoint).with_context(|| format!("resolve {}", mountpoint.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 of each mountinfo line is the mount point (spaces escaped as \040).
    let taken = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point.replace("\\040", " ") == canonical.to_string_lossy());
    if taken {
        anyhow::bail!("something is already mounted at {}", canonical.display());
    }
    let mut entries = std::fs::read_dir(&canonical).with_context(|| format!("list {}", canonical.display()))?;
    if entries.next().is_some() {
        anyhow::bail!(
            "mount point {} is not empty; mounting there would hide its files",
            canonical.display()
        );
    }
    Ok(())
}

pub fn mount_volume(volume: Volume, mountpoint: &Path) -> Result<fuser::BackgroundSession> {
    sohofs_fuse::mount(volume, tokio::runtime::Handle::current(), mountpoint)
        .with_context(|| format!("mount FUSE at {}", mountpoint.display()))
}

/// Unmounts; when files are still busy, detaches the mount lazily so that the
/// process can end.
pub async fn unmount(session: fuser::BackgroundSession, mountpoint: &Path) {
    let joined = tokio::task::spawn_blocking(move || session.umount_and_join());
    let reason = match tokio::time::timeout(UNMOUNT_TIMEOUT, joined).await {
        Ok(Ok(Ok(()))) => return,
        Ok(Ok(Err(error))) if error.raw_os_error() == Some(libc::EBUSY) => {
            "files on the mount are still in use".to_string()
        }
        Ok(Ok(Err(error))) => error.to_string(),
        Ok(Err(error)) => format!("unmount task failed: {error}"),
        Err(_) => "the unmount did not finish in time".to_string(),
    };
    tracing::warn!("{}: {reason}; detaching it lazily", mountpoint.display());
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .status();
}

pub async fn run(config_path: &Path, mountpoint: &Path, identity: Option<&Path>) -> Result<()> {
    check_mountpoint(mountpoint)?;
    let config = ClusterConfig::load(config_path)?;
    let volume = connect(&config, config_path, identity).await?;
    let session = mount_volume(volume, mountpoint)?;
    println!(
        "sohofs: mounted at {}; stop with Ctrl-C (or SIGTERM)",
        mountpoint.display()
    );
    crate::up::terminated().await;
    unmount(session, mountpoint).await;
    Ok(())
}
