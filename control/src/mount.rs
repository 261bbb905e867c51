//! `sohofs mount`: a client of a running cluster, mounted with FUSE.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use sohofs_storage::volume::{Volume, VolumeConfig};

use crate::config::ClusterConfig;

/// How long an unmount may wait for busy files before it detaches lazily.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(config: &ClusterConfig, config_path: &Path) -> Result<Volume> {
    let data_key = config.data_key(config_path)?;
    Volume::connect(VolumeConfig {
        meta_addrs: config.meta.clone(),
        data_key,
    })
    .await
    .with_context(|| format!("connect to meta at {}", config.meta.join(", ")))
}

pub fn mount_volume(volume: Volume, mountpoint: &Path) -> Result<fuser::BackgroundSession> {
    std::fs::create_dir_all(mountpoint).with_context(|| format!("create mount point {}", mountpoint.display()))?;
    sohofs_fuse::mount(volume, tokio::runtime::Handle::current(), mountpoint)
        .with_context(|| format!("mount FUSE at {}", mountpoint.display()))
}

/// Unmounts; when files are still busy, detaches the mount lazily so that the
/// process can end.
pub async fn unmount(session: fuser::BackgroundSession, mountpoint: &Path) {
    let joined = tokio::task::spawn_blocking(move || session.umount_and_join());
    match tokio::time::timeout(UNMOUNT_TIMEOUT, joined).await {
        Ok(Ok(Ok(()))) => {}
        outcome => {
            tracing::warn!(?outcome, "clean unmount failed; detaching lazily");
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(mountpoint)
                .status();
        }
    }
}

pub async fn run(config_path: &Path, mountpoint: &Path) -> Result<()> {
    let config = ClusterConfig::load(config_path)?;
    let volume = connect(&config, config_path).await?;
    let session = mount_volume(volume, mountpoint)?;
    println!(
        "sohofs: mounted at {}; stop with Ctrl-C (or SIGTERM)",
        mountpoint.display()
    );
    crate::up::terminated().await;
    unmount(session, mountpoint).await;
    Ok(())
}
