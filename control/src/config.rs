//! The cluster config file (`DIR/sohofs.toml`) that every verb takes with
//! `--config`, and the volume key file beside it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sohofs_keyring::LdapConfig;
use sohofs_storage::codec::{DataKey, DATA_KEY_BYTES};

pub const CONFIG_FILE: &str = "sohofs.toml";
pub const KEY_FILE: &str = "volume.key";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Addresses of the meta service (one today; a replicated group later).
    pub meta: Vec<String>,
    /// The volume data key file, relative to the config file's folder.
    pub data_key_file: String,
    pub volume: VolumeSection,
    #[serde(default)]
    pub nodes: Vec<NodeSection>,
    /// Ids of nodes taken out with `sohofs node remove`: `up` starts them no
    /// more and `node add` never gives their ids again.
    #[serde(default)]
    pub removed_nodes: Vec<u64>,
    /// Healing: grace period, rebuild bandwidth, scrub schedule. A config
    /// written before healing existed gets the defaults.
    #[serde(default)]
    pub heal: HealSection,
    /// The office directory that approves machines (`sohofs keyring`).
    /// Relative file paths in it are relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapConfig>,
    /// This machine's identity for protected directories (an age identity
    /// file or an SSH ed25519 host key; relative to the config's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Where key grants, revokes, unwraps, rekeys and denials are written as
    /// ECS JSON lines (relative to the config's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealSection {
    /// A node silent for longer than this is lost and its shards are rebuilt.
    pub grace_period_s: u64,
    /// Shard bytes rebuilt per second at most (0: no limit).
    pub rebuild_bytes_per_s: u64,
    /// Each node re-hashes all its shards this often (0: only on `sohofs scrub`).
    pub scrub_interval_s: u64,
    /// Shard bytes a scheduled scrub reads per second at most (0: no limit).
    pub scrub_bytes_per_s: u64,
    /// A shard that no record names is collected only when older than this.
    pub orphan_safety_window_s: u64,
    /// Meta looks for orphan shards this often (0: never).
    pub orphan_sweep_interval_s: u64,
}

impl Default for HealSection {
    fn default() -> Self {
        HealSection {
            grace_period_s: sohofs_storage::heal::GRACE_PERIOD_DEFAULT.as_secs(),
            rebuild_bytes_per_s: sohofs_storage::heal::REBUILD_BYTES_PER_S_DEFAULT,
            scrub_interval_s: sohofs_storage::node::SCRUB_INTERVAL_DEFAULT.as_secs(),
            scrub_bytes_per_s: sohofs_storage::node::SCRUB_BYTES_PER_S_DEFAULT,
            orphan_safety_window_s: sohofs_storage::heal::ORPHAN_SAFETY_WINDOW_DEFAULT.as_secs(),
            orphan_sweep_interval_s: sohofs_storage::heal::ORPHAN_SWEEP_INTERVAL_DEFAULT.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    pub k: u8,
    pub m: u8,
    pub write_quorum: u8,
    pub chunk_bytes: u32,
    pub inline_bytes_max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: u64,
    pub listen: String,
    /// The node's folder, relative to the config file's folder.
    pub dir: String,
    pub host: String,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read cluster config {}", path.display()))?;
        let config: ClusterConfig =
            toml::from_str(&text).with_context(|| format!("parse cluster config {}", path.display()))?;
        if config.meta.is_empty() {
            bail!("{}: `meta` lists no address", path.display());
        }
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serialise cluster config")?;
        let temp = path.with_extension("toml.tmp");
        std::fs::write(&temp, text).with_context(|| format!("write {}", temp.display()))?;
        std::fs::rename(&temp, path).with_context(|| format!("replace {}", path.display()))?;
        Ok(())
    }

    /// Reads the volume data key named by this config, relative to `config_path`.
    pub fn data_key(&self, config_path: &Path) -> Result<DataKey> {
        load_key(&folder_of(config_path).join(&self.data_key_file))
    }
}

pub fn folder_of(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Reads a key file: 64 hex digits.
pub fn load_key(path: &Path) -> Result<DataKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read key file {}", path.display()))?;
    let bytes = hex::decode(text.trim()).with_context(|| format!("key file {} is not hex", path.display()))?;
    let array: [u8; DATA_KEY_BYTES] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("key file {} does not hold a {DATA_KEY_BYTES}-byte key", path.display()))?;
    Ok(DataKey::from_bytes(array))
}

/// Writes a new random key file readable by its owner only; an existing one
/// is kept.
pub fn create_key(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let key = DataKey::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create key file {}", path.display()))?;
    writeln!(file, "{}", hex::encode(key.as_bytes())).context("write key file")?;
    file.sync_all().context("sync key file")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = ClusterConfig {
            meta: vec!["127.0.0.1:1".into()],
            data_key_file: KEY_FILE.into(),
            volume: VolumeSection {
                k: 4,
                m: 2,
                write_quorum: 5,
                chunk_bytes: 4 << 20,
                inline_bytes_max: 2048,
            },
            nodes: vec![NodeSection {
                id: 1,
                listen: "127.0.0.1:2".into(),
                dir: "nodes/1".into(),
                host: "local-1".into(),
            }],
            removed_nodes: vec![7],
            heal: HealSection {
                grace_period_s: 3,
                ..HealSection::default()
            },
            ldap: None,
            identity: Some("machine.age".into()),
            audit_log: None,
        };
        let path = dir.path().join(CONFIG_FILE);
        config.save(&path).unwrap();
        assert_eq!(ClusterConfig::load(&path).unwrap(), config);
        // A config from before healing existed loads with the defaults.
        let old = std::fs::read_to_string(&path).unwrap();
        let old = old.split("[heal]").next().unwrap().to_string();
        std::fs::write(&path, old).unwrap();
        assert_eq!(ClusterConfig::load(&path).unwrap().heal, HealSection::default());
        create_key(&dir.path().join(KEY_FILE)).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = config.data_key(&path).unwrap();
        assert_eq!(key.as_bytes().len(), 32);
        std::fs::write(dir.path().join(KEY_FILE), "nothex").unwrap();
        assert!(config.data_key(&path).is_err());
    }

    #[test]
    fn a_mistyped_key_is_an_error_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let text = "meta = [\"127.0.0.1:1\"]\ndata_key_file = \"volume.key\"\nidentitiy = \"x\"\n\n[volume]\nk = 2\nm = 1\nwrite_quorum = 3\nchunk_bytes = 4194304\ninline_bytes_max = 4096\n";
        std::fs::write(&path, text).unwrap();
        let error = format!("{:#}", ClusterConfig::load(&path).unwrap_err());
        assert!(error.contains("identitiy"), "{error}");
        let text = text
            .replace("identitiy = \"x\"\n", "")
            .replace("[volume]\n", "[volume]\nkk = 1\n");
        std::fs::write(&path, text).unwrap();
        let error = format!("{:#}", ClusterConfig::load(&path).unwrap_err());
        assert!(error.contains("kk"), "{error}");
    }

    #[test]
    fn an_ldap_table_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let text = r#"
            meta = ["127.0.0.1:1"]
            data_key_file = "volume.key"

            [volume]
            k = 2
            m = 1
            write_quorum = 3
            chunk_bytes = 4194304
            inline_bytes_max = 4096

            [ldap]
            url = "ldaps://ldap.example.org"
            bind_dn = "cn=admin,dc=example,dc=org"
            bind_password_file = "ldap.secret"
            base_dn = "dc=example,dc=org"
            cluster_group = "cn=sohofs-machines,ou=groups,dc=example,dc=org"
            ca_file = "ca.pem"
        "#;
        std::fs::write(&path, text).unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        let ldap = config.ldap.clone().unwrap();
        assert_eq!(ldap.recipient_attribute, "sshPublicKey");
        assert_eq!(ldap.machine_filter, "(objectClass=device)");
        assert_eq!(ldap.ca_file.as_deref(), Some(Path::new("ca.pem")));
        config.save(&path).unwrap();
        assert_eq!(ClusterConfig::load(&path).unwrap(), config);
    }
}
