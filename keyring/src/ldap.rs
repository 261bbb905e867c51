//! LDAP approval: which machines a group lets in, and the key each publishes.
//!
//! A machine is an entry under `base_dn` matching `machine_filter`. It is a
//! member of a group when the group (a groupOfNames) lists its DN in
//! `member` — OpenLDAP — or when the machine's own `memberOf` names the group
//! — FreeIPA hostgroups, where 389-ds also resolves nested groups into
//! `memberOf`. Both are read and their union counts. Nested groups in
//! `member` are not followed: an entry listed there that is not a machine is
//! ignored. The group entry must exist, so that a mistyped DN is an error
//! rather than a group with no members (which sync would read as "revoke
//! everyone").
//!
//! The selection is pure ([`select_members`]); [`Directory`] only fetches.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::{Deserialize, Serialize};

use crate::recipient::MachineRecipient;

/// Every connect and every operation gives up after this long.
pub const LDAP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// A search returning more machines than this is refused (and so is a group
/// with more members): an office has tens, not tens of thousands.
pub const MACHINES_MAX: usize = 10_000;
/// Bound on the password file.
pub const PASSWORD_FILE_BYTES_MAX: u64 = 4096;
/// LDAP result code of a failed simple bind (RFC 4511).
const RC_INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code of a search whose base does not exist.
const RC_NO_SUCH_OBJECT: u32 = 32;

fn default_recipient_attribute() -> String {
    "sshPublicKey".into()
}

fn default_machine_filter() -> String {
    "(objectClass=device)".into()
}

/// The `[ldap]` table of the cluster config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    pub bind_dn: String,
    /// A file holding the bind password (one line; a final newline is
    /// dropped). Relative paths are relative to the config file's folder.
    pub bind_password_file: PathBuf,
    pub base_dn: String,
    #[serde(default = "default_machine_filter")]
    pub machine_filter: String,
    /// The attribute holding a machine's recipient: `sshPublicKey`
    /// (openssh-lpk), `ipaSshPubKey` on FreeIPA, or any attribute holding an
    /// age recipient.
    #[serde(default = "default_recipient_attribute")]
    pub recipient_attribute: String,
    /// The group whose machines get the volume (standard tier) key.
    pub cluster_group: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// A PEM file of the CA that signed the server's certificate, for
    /// `ldaps://` and StartTLS; the system's roots are used without it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl LdapConfig {
    /// Makes relative paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.bind_password_file.is_relative() {
            self.bind_password_file = base.join(&self.bind_password_file);
        }
        if let Some(ca_file) = &mut self.ca_file {
            if ca_file.is_relative() {
                *ca_file = base.join(&*ca_file);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {PASSWORD_FILE_BYTES_MAX} bytes; not a password file")]
    PasswordFileTooLarge { path: PathBuf },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the directory refused the bind as {bind_dn}: wrong password or no such user")]
    BindRejected { bind_dn: String },
    #[error("group {group_dn} does not exist in the directory")]
    GroupNotFound { group_dn: String },
    #[error("{what} returned more than {MACHINES_MAX} entries")]
    TooManyEntries { what: &'static str },
    #[error("{what}: {reason}")]
    Operation { what: &'static str, reason: String },
}

impl LdapError {
    /// Retrying later may help (the server is down or slow), as opposed to
    /// a configuration the administrator must fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, LdapError::Connect { .. } | LdapError::Operation { .. })
    }
}

/// A member machine with a key sohofs can wrap to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedMachine {
    pub dn: String,
    /// `cn` (or FreeIPA's `fqdn`), else the DN.
    pub name: String,
    /// Every usable key the entry publishes (most publish one).
    pub recipients: Vec<MachineRecipient>,
}

/// A member machine that cannot be granted anything, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusableMachine {
    pub dn: String,
    pub name: String,
    pub reason: String,
}

/// The members of one group, as far as keys go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Approval {
    /// Sorted by DN.
    pub approved: Vec<ApprovedMachine>,
    /// Sorted by DN.
    pub unusable: Vec<UnusableMachine>,
}

/// A machine entry as fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineEntry {
    pub dn: String,
    pub name: Option<String>,
    pub recipient_values: Vec<String>,
    pub member_of: Vec<String>,
}

/// DNs compare case-insensitively and without the spaces some tools put
/// after commas. (Escaped commas and multi-valued RDNs are rare in machine
/// and group DNs; they compare by their text.)
pub fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(|part| part.trim().to_lowercase())
                .collect::<Vec<_>>()
                .join("=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The machines of `group_dn`: those the group lists in `member` and those
/// whose `memberOf` names it.
pub fn select_members(machines: &[MachineEntry], group_members: &[String], group_dn: &str) -> Approval {
    let listed: BTreeSet<String> = group_members.iter().map(|dn| normalize_dn(dn)).collect();
    let group = normalize_dn(group_dn);
    let mut approval = Approval::default();
    let mut seen = BTreeSet::new();
    for machine in machines {
        let key = normalize_dn(&machine.dn);
        let is_member = listed.contains(&key) || machine.member_of.iter().any(|dn| normalize_dn(dn) == group);
        if !is_member || !seen.insert(key) {
            continue;
        }
        let name = machine.name.clone().unwrap_or_else(|| machine.dn.clone());
        let mut recipients = Vec::new();
        let mut refused = Vec::new();
        for value in &machine.recipient_values {
            match value.parse::<MachineRecipient>() {
                Ok(recipient) if !recipients.contains(&recipient) => recipients.push(recipient),
                Ok(_) => {}
                Err(error) => refused.push(error.to_string()),
            }
        }
        if recipients.is_empty() {
            let reason = if refused.is_empty() {
                "publishes no key".to_string()
            } else {
                format!("publishes no usable key: {}", refused.join("; "))
            };
            approval.unusable.push(UnusableMachine {
                dn: machine.dn.clone(),
                name,
                reason,
            });
        } else {
            approval.approved.push(ApprovedMachine {
                dn: machine.dn.clone(),
                name,
                recipients,
            });
        }
    }
    approval.approved.sort_by(|left, right| left.dn.cmp(&right.dn));
    approval.unusable.sort_by(|left, right| left.dn.cmp(&right.dn));
    approval
}

/// A bound connection to the directory.
pub struct Directory {
    ldap: ldap3::Ldap,
    config: LdapConfig,
}

impl Directory {
    /// Connects (with TLS when configured) and binds as `bind_dn`.
    pub async fn connect(config: &LdapConfig) -> Result<Directory, LdapError> {
        let password = read_password(&config.bind_password_file)?;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(LDAP_TIMEOUT_DEFAULT)
            .set_starttls(config.starttls);
        if let Some(ca_file) = &config.ca_file {
            settings = settings.set_connector(tls_connector(ca_file)?);
        }
        let connect_error = |reason: String| LdapError::Connect {
            url: config.url.clone(),
            reason,
        };
        let (connection, mut ldap) = LdapConnAsync::with_settings(settings, &config.url)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.drive().await {
                tracing::debug!(%error, "LDAP connection ended");
            }
        });
        let bound = ldap
            .with_timeout(LDAP_TIMEOUT_DEFAULT)
            .simple_bind(&config.bind_dn, &password)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        match bound.rc {
            0 => {}
            RC_INVALID_CREDENTIALS => {
                return Err(LdapError::BindRejected {
                    bind_dn: config.bind_dn.clone(),
                })
            }
            _ => {
                return Err(LdapError::Operation {
                    what: "bind",
                    reason: bound.to_string(),
                })
            }
        }
        Ok(Directory {
            ldap,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &LdapConfig {
        &self.config
    }

    /// The machines approved by `group_dn` and those it lists but cannot use.
    pub async fn approved_machines(&mut self, group_dn: &str) -> Result<Approval, LdapError> {
        let group_members = self.group_members(group_dn).await?;
        let machines = self.machines().await?;
        Ok(select_members(&machines, &group_members, group_dn))
    }

    /// The machines of the cluster group.
    pub async fn cluster_machines(&mut self) -> Result<Approval, LdapError> {
        let group = self.config.cluster_group.clone();
        self.approved_machines(&group).await
    }

    async fn group_members(&mut self, group_dn: &str) -> Result<Vec<String>, LdapError> {
        let (entries, result) = self
            .search(
                "read the group",
                group_dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["member"],
            )
            .await?;
        if result == RC_NO_SUCH_OBJECT || entries.is_empty() {
            return Err(LdapError::GroupNotFound {
                group_dn: group_dn.to_string(),
            });
        }
        let members = attribute_values(&entries[0], "member");
        if members.len() > MACHINES_MAX {
            return Err(LdapError::TooManyEntries { what: "the group" });
        }
        Ok(members)
    }

    async fn machines(&mut self) -> Result<Vec<MachineEntry>, LdapError> {
        let base_dn = self.config.base_dn.clone();
        let filter = self.config.machine_filter.clone();
        let recipient_attribute = self.config.recipient_attribute.clone();
        let attributes = vec!["cn", "fqdn", "memberOf", recipient_attribute.as_str()];
        let (entries, result) = self
            .search("search machines", &base_dn, Scope::Subtree, &filter, attributes)
            .await?;
        if result == RC_NO_SUCH_OBJECT {
            return Err(LdapError::Operation {
                what: "search machines",
                reason: format!("base {base_dn} does not exist"),
            });
        }
        Ok(entries
            .iter()
            .map(|entry| MachineEntry {
                dn: entry.dn.clone(),
                name: attribute_values(entry, "cn")
                    .into_iter()
                    .next()
                    .or_else(|| attribute_values(entry, "fqdn").into_iter().next()),
                recipient_values: attribute_values(entry, &recipient_attribute),
                member_of: attribute_values(entry, "memberOf"),
            })
            .collect())
    }

    /// One search, bounded in time and size. Returns the entries and the
    /// result code (0, or 32 when the base does not exist).
    async fn search(
        &mut self,
        what: &'static str,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: Vec<&str>,
    ) -> Result<(Vec<SearchEntry>, u32), LdapError> {
        let operation_error = |reason: String| LdapError::Operation { what, reason };
        let searched = self
            .ldap
            .with_timeout(LDAP_TIMEOUT_DEFAULT)
            .with_search_options(ldap3::SearchOptions::new().sizelimit(MACHINES_MAX as i32 + 1))
            .search(base, scope, filter, attributes)
            .await
            .map_err(|error| operation_error(error.to_string()))?;
        let ldap3::SearchResult(raw_entries, result) = searched;
        match result.rc {
            0 => {}
            RC_NO_SUCH_OBJECT => return Ok((Vec::new(), RC_NO_SUCH_OBJECT)),
            // sizeLimitExceeded
            4 => return Err(LdapError::TooManyEntries { what }),
            _ => return Err(operation_error(result.to_string())),
        }
        if raw_entries.len() > MACHINES_MAX {
            return Err(LdapError::TooManyEntries { what });
        }
        let mut entries = Vec::with_capacity(raw_entries.len());
        for raw in raw_entries {
            if raw.is_ref() || raw.is_intermediate() {
                continue;
            }
            // ldap3 panics on an entry it cannot parse; a malformed answer
            // from the server must be an error, not a crash.
            let entry = catch_unwind(AssertUnwindSafe(|| SearchEntry::construct(raw)))
                .map_err(|_| operation_error("malformed entry in the server's answer".into()))?;
            entries.push(entry);
        }
        Ok((entries, 0))
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

/// Values of an attribute, matched case-insensitively by name; binary
/// values that are UTF-8 count as text.
fn attribute_values(entry: &SearchEntry, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (attribute, texts) in &entry.attrs {
        if attribute.eq_ignore_ascii_case(name) {
            values.extend(texts.iter().cloned());
        }
    }
    for (attribute, binaries) in &entry.bin_attrs {
        if attribute.eq_ignore_ascii_case(name) {
            values.extend(
                binaries
                    .iter()
                    .filter_map(|bytes| String::from_utf8(bytes.clone()).ok()),
            );
        }
    }
    values
}

fn read_password(path: &Path) -> Result<String, LdapError> {
    let read_error = |source| LdapError::ReadFile {
        what: "bind password file",
        path: path.to_path_buf(),
        source,
    };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > PASSWORD_FILE_BYTES_MAX {
        return Err(LdapError::PasswordFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_string())
}

fn tls_connector(ca_file: &Path) -> Result<native_tls::TlsConnector, LdapError> {
    let pem = std::fs::read(ca_file).map_err(|source| LdapError::ReadFile {
        what: "CA file",
        path: ca_file.to_path_buf(),
        source,
    })?;
    let certificate = native_tls::Certificate::from_pem(&pem).map_err(|error| LdapError::Tls(error.to_string()))?;
    native_tls::TlsConnector::builder()
        .add_root_certificate(certificate)
        .build()
        .map_err(|error| LdapError::Tls(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "cn=sohofs-machines,ou=groups,dc=example,dc=org";
    const AGE: &str = "age1r6cdtdgzp2phkf6723n9xhscvt5dze7fum7mdcc6v7ye4jgw7faskzyzlz";

    fn machine(cn: &str, keys: &[&str], member_of: &[&str]) -> MachineEntry {
        MachineEntry {
            dn: format!("cn={cn},ou=machines,dc=example,dc=org"),
            name: Some(cn.into()),
            recipient_values: keys.iter().map(|key| key.to_string()).collect(),
            member_of: member_of.iter().map(|dn| dn.to_string()).collect(),
        }
    }

    #[test]
    fn members_come_from_member_and_from_member_of() {
        let machines = [
            machine("listed", &[AGE], &[]),
            machine(
                "freeipa",
                &[AGE],
                &["CN=sohofs-machines, ou=Groups, dc=example, dc=org"],
            ),
            machine("other", &[AGE], &["cn=finance,ou=groups,dc=example,dc=org"]),
        ];
        let listed = ["CN=Listed,OU=machines,DC=example,DC=org".to_string()];
        let approval = select_members(&machines, &listed, GROUP);
        let names: Vec<&str> = approval.approved.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["freeipa", "listed"]);
        assert!(approval.unusable.is_empty());
    }

    #[test]
    fn members_without_a_usable_key_are_reported_with_the_reason() {
        let machines = [
            machine("nokey", &[], &[GROUP]),
            machine("rsa", &["ssh-rsa AAAAB3NzaC1yc2E root@rsa"], &[GROUP]),
            machine("both", &["ssh-rsa AAAAB3NzaC1yc2E root@both", AGE, AGE], &[GROUP]),
        ];
        let approval = select_members(&machines, &[], GROUP);
        assert_eq!(approval.approved.len(), 1);
        assert_eq!(approval.approved[0].name, "both");
        assert_eq!(approval.approved[0].recipients.len(), 1, "duplicates count once");
        let reasons: Vec<(&str, &str)> = approval
            .unusable
            .iter()
            .map(|m| (m.name.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(reasons[0], ("nokey", "publishes no key"));
        assert_eq!(reasons[1].0, "rsa");
        assert!(reasons[1].1.contains("ssh-rsa"), "{}", reasons[1].1);
    }

    #[test]
    fn the_config_table_reads_as_the_issue_writes_it() {
        let text = r#"
            url = "ldap://127.0.0.1:3890"
            bind_dn = "cn=admin,dc=example,dc=org"
            bind_password_file = "ldap.secret"
            base_dn = "dc=example,dc=org"
            machine_filter = "(objectClass=device)"
            recipient_attribute = "sshPublicKey"
            cluster_group = "cn=sohofs-machines,ou=groups,dc=example,dc=org"
        "#;
        let mut config: LdapConfig = toml::from_str(text).unwrap();
        assert!(!config.starttls);
        assert_eq!(config.ca_file, None);
        config.resolve_paths(Path::new("/etc/sohofs"));
        assert_eq!(config.bind_password_file, Path::new("/etc/sohofs/ldap.secret"));
        let typo = text.replace("base_dn", "basedn");
        assert!(toml::from_str::<LdapConfig>(&typo).is_err());
    }

    #[test]
    fn the_password_file_loses_only_its_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, " pass word \n").unwrap();
        assert_eq!(read_password(&path).unwrap(), " pass word ");
    }
}
