//! LDAP approval: which machines a group lets in, and the key each publishes;
//! and which people a group holds, with the numeric ids their homes get.
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
//! People are entries of objectClass posixAccount. A group holds them the
//! same two ways, and a posixGroup a third: its `memberUid` values are uids
//! (names, not DNs), matched exactly against each account's `uid`. A
//! `memberUid` naming no account is ignored, as a `member` that is not a
//! person is. A member whose uid cannot name a home folder, whose
//! uidNumber or gidNumber is missing or unusable, who is root (uidNumber
//! 0), or who shares a uid with another member is reported with the
//! reason, not dropped.
//!
//! The selection is pure ([`select_members`], [`select_posix_users`]);
//! [`Directory`] only fetches.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::{Deserialize, Serialize};

use crate::recipient::MachineRecipient;

/// Every connect and every operation gives up after this long.
pub const LDAP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// A search returning more entries than this is refused (and so is a group
/// with more members): an office has tens of machines and people, not tens
/// of thousands.
pub const ENTRIES_MAX: usize = 10_000;
/// The longest uid that can name a home folder: NAME_MAX of Linux.
pub const HOME_NAME_BYTES_MAX: usize = 255;
/// The accounts [`Directory::posix_users`] fetches. The selection checks the
/// objectClass again, so the rule is in one pure place; the filter only
/// keeps machines and groups out of the bounded search.
const POSIX_ACCOUNT_FILTER: &str = "(objectClass=posixAccount)";
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
    // The I/O error is in the message, not a `source`: a chain prints it once.
    #[error("read {what} {path}: {cause}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
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
    #[error("{what} returned more than {ENTRIES_MAX} entries")]
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

/// The DN side of membership, shared by machines and people: listed in the
/// group's `member`, or naming the group in the entry's own `memberOf`.
struct DnMembership {
    listed: BTreeSet<String>,
    group: String,
}

impl DnMembership {
    fn new(member_dns: &[String], group_dn: &str) -> DnMembership {
        DnMembership {
            listed: member_dns.iter().map(|dn| normalize_dn(dn)).collect(),
            group: normalize_dn(group_dn),
        }
    }

    /// Whether the entry `normalized_dn` (already [`normalize_dn`]ed) with
    /// these `memberOf` values is a member.
    fn includes(&self, normalized_dn: &str, member_of: &[String]) -> bool {
        self.listed.contains(normalized_dn) || member_of.iter().any(|dn| normalize_dn(dn) == self.group)
    }
}

/// The machines of `group_dn`: those the group lists in `member` and those
/// whose `memberOf` names it.
pub fn select_members(machines: &[MachineEntry], group_members: &[String], group_dn: &str) -> Approval {
    let membership = DnMembership::new(group_members, group_dn);
    let mut approval = Approval::default();
    let mut seen = BTreeSet::new();
    for machine in machines {
        let key = normalize_dn(&machine.dn);
        if !membership.includes(&key, &machine.member_of) || !seen.insert(key) {
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

/// A member person with what their home needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PosixUser {
    pub dn: String,
    /// The login name; names the home folder.
    pub uid: String,
    pub uid_number: u32,
    pub gid_number: u32,
}

/// A member person who cannot be given a home, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnusableUser {
    pub dn: String,
    pub reason: String,
}

/// The people of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PosixUsers {
    /// Sorted by uid; no two share a uid.
    pub users: Vec<PosixUser>,
    /// Sorted by DN.
    pub unusable: Vec<UnusableUser>,
}

/// A group entry as fetched: the DNs of `member` (groupOfNames) and the
/// uids of `memberUid` (posixGroup). A group may be both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupEntry {
    pub member: Vec<String>,
    pub member_uid: Vec<String>,
}

/// An account entry as fetched; every attribute with all its values, so
/// that the selection can refuse a multi-valued one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountEntry {
    pub dn: String,
    pub object_classes: Vec<String>,
    pub uid: Vec<String>,
    pub uid_number: Vec<String>,
    pub gid_number: Vec<String>,
    pub member_of: Vec<String>,
}

/// The posixAccounts of the group `group_dn`: those it lists in `member`,
/// those whose uid it lists in `memberUid`, and those whose `memberOf`
/// names it.
pub fn select_posix_users(accounts: &[AccountEntry], group: &GroupEntry, group_dn: &str) -> PosixUsers {
    let membership = DnMembership::new(&group.member, group_dn);
    // memberUid is caseExactMatch in the nis schema, and a home folder's
    // name is case-sensitive: uids compare exactly.
    let member_uids: BTreeSet<&str> = group.member_uid.iter().map(String::as_str).collect();
    let mut users = Vec::new();
    let mut unusable = Vec::new();
    let mut seen = BTreeSet::new();
    for account in accounts {
        let is_posix_account = account
            .object_classes
            .iter()
            .any(|class| class.eq_ignore_ascii_case("posixAccount"));
        let key = normalize_dn(&account.dn);
        let is_member = membership.includes(&key, &account.member_of)
            || account.uid.iter().any(|uid| member_uids.contains(uid.as_str()));
        if !is_posix_account || !is_member || !seen.insert(key) {
            continue;
        }
        match posix_user(account) {
            Ok(user) => users.push(user),
            Err(reason) => unusable.push(UnusableUser {
                dn: account.dn.clone(),
                reason,
            }),
        }
    }
    // Two accounts with one uid would be given one home folder, owned by
    // whichever came last: neither gets it.
    let mut dns_by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for user in &users {
        dns_by_uid.entry(user.uid.clone()).or_default().push(user.dn.clone());
    }
    let (mut users, clashing): (Vec<PosixUser>, Vec<PosixUser>) =
        users.into_iter().partition(|user| dns_by_uid[&user.uid].len() == 1);
    for user in clashing {
        let others: Vec<&str> = dns_by_uid[&user.uid]
            .iter()
            .filter(|dn| **dn != user.dn)
            .map(String::as_str)
            .collect();
        unusable.push(UnusableUser {
            reason: format!("uid {:?} is also the uid of {}", user.uid, others.join(", ")),
            dn: user.dn,
        });
    }
    users.sort_by(|left, right| left.uid.cmp(&right.uid));
    unusable.sort_by(|left, right| left.dn.cmp(&right.dn));
    PosixUsers { users, unusable }
}

/// The user an account describes, or why it cannot have a home.
fn posix_user(account: &AccountEntry) -> Result<PosixUser, String> {
    let uid = match account.uid.as_slice() {
        [] => return Err("has no uid".into()),
        [uid] => uid,
        several => {
            return Err(format!(
                "has {} uid values; which names the home is unclear",
                several.len()
            ))
        }
    };
    check_home_name(uid)?;
    let uid_number = id_number(&account.uid_number, "uidNumber")?;
    let gid_number = id_number(&account.gid_number, "gidNumber")?;
    if uid_number == 0 {
        return Err("uidNumber is 0 (root)".into());
    }
    Ok(PosixUser {
        dn: account.dn.clone(),
        uid: uid.clone(),
        uid_number,
        gid_number,
    })
}

/// A uid names a folder in the homes folder: one path component.
fn check_home_name(uid: &str) -> Result<(), String> {
    if uid.is_empty() {
        return Err("uid is empty".into());
    }
    if uid == "." || uid == ".." {
        return Err(format!("uid {uid:?} is not a folder name"));
    }
    if uid.contains('/') {
        return Err(format!("uid {uid:?} contains '/'"));
    }
    if uid.contains('\0') {
        return Err(format!("uid {uid:?} contains NUL"));
    }
    if uid.len() > HOME_NAME_BYTES_MAX {
        return Err(format!(
            "uid is {} bytes long; a folder name holds at most {HOME_NAME_BYTES_MAX}",
            uid.len()
        ));
    }
    Ok(())
}

/// The one value of uidNumber or gidNumber: decimal digits only (no sign,
/// no spaces), below 2^32 - 1, which is (uid_t)-1: chown reads it as
/// "leave unchanged", so a home chowned to it would stay root's.
fn id_number(values: &[String], attribute: &str) -> Result<u32, String> {
    let value = match values {
        [] => return Err(format!("has no {attribute}")),
        [value] => value,
        several => return Err(format!("has {} {attribute} values", several.len())),
    };
    let number = Some(value)
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse::<u32>().ok())
        .filter(|number| *number != u32::MAX);
    number.ok_or_else(|| format!("{attribute} {value:?} is not a number from 0 to {}", u32::MAX - 1))
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
        let group = self.read_group(group_dn).await?;
        let machines = self.machines().await?;
        Ok(select_members(&machines, &group.member, group_dn))
    }

    /// The machines of the cluster group.
    pub async fn cluster_machines(&mut self) -> Result<Approval, LdapError> {
        let group = self.config.cluster_group.clone();
        self.approved_machines(&group).await
    }

    /// The people of `group_dn` who can have a home, and those it holds
    /// who cannot.
    pub async fn posix_users(&mut self, group_dn: &str) -> Result<PosixUsers, LdapError> {
        let group = self.read_group(group_dn).await?;
        let accounts = self.posix_accounts().await?;
        Ok(select_posix_users(&accounts, &group, group_dn))
    }

    async fn read_group(&mut self, group_dn: &str) -> Result<GroupEntry, LdapError> {
        let (entries, result) = self
            .search(
                "read the group",
                group_dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["member", "memberUid"],
            )
            .await?;
        if result == RC_NO_SUCH_OBJECT || entries.is_empty() {
            return Err(LdapError::GroupNotFound {
                group_dn: group_dn.to_string(),
            });
        }
        let group = GroupEntry {
            member: attribute_values(&entries[0], "member"),
            member_uid: attribute_values(&entries[0], "memberUid"),
        };
        if group.member.len() > ENTRIES_MAX || group.member_uid.len() > ENTRIES_MAX {
            return Err(LdapError::TooManyEntries { what: "the group" });
        }
        Ok(group)
    }

    async fn machines(&mut self) -> Result<Vec<MachineEntry>, LdapError> {
        let filter = self.config.machine_filter.clone();
        let recipient_attribute = self.config.recipient_attribute.clone();
        let attributes = vec!["cn", "fqdn", "memberOf", recipient_attribute.as_str()];
        let entries = self.search_base_dn("search machines", &filter, attributes).await?;
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

    async fn posix_accounts(&mut self) -> Result<Vec<AccountEntry>, LdapError> {
        let attributes = vec!["objectClass", "uid", "uidNumber", "gidNumber", "memberOf"];
        let entries = self
            .search_base_dn("search posixAccounts", POSIX_ACCOUNT_FILTER, attributes)
            .await?;
        Ok(entries
            .iter()
            .map(|entry| AccountEntry {
                dn: entry.dn.clone(),
                object_classes: attribute_values(entry, "objectClass"),
                uid: attribute_values(entry, "uid"),
                uid_number: attribute_values(entry, "uidNumber"),
                gid_number: attribute_values(entry, "gidNumber"),
                member_of: attribute_values(entry, "memberOf"),
            })
            .collect())
    }

    /// A subtree search under `base_dn`, which must exist.
    async fn search_base_dn(
        &mut self,
        what: &'static str,
        filter: &str,
        attributes: Vec<&str>,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let base_dn = self.config.base_dn.clone();
        let (entries, result) = self.search(what, &base_dn, Scope::Subtree, filter, attributes).await?;
        if result == RC_NO_SUCH_OBJECT {
            return Err(LdapError::Operation {
                what,
                reason: format!("base {base_dn} does not exist"),
            });
        }
        Ok(entries)
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
            .with_search_options(ldap3::SearchOptions::new().sizelimit(ENTRIES_MAX as i32 + 1))
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
        if raw_entries.len() > ENTRIES_MAX {
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
    let read_error = |cause| LdapError::ReadFile {
        what: "bind password file",
        path: path.to_path_buf(),
        cause,
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
    let pem = std::fs::read(ca_file).map_err(|cause| LdapError::ReadFile {
        what: "CA file",
        path: ca_file.to_path_buf(),
        cause,
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

    const STAFF: &str = "cn=staff,ou=groups,dc=example,dc=org";

    fn account(uid: &str, uid_number: &str, member_of: &[&str]) -> AccountEntry {
        AccountEntry {
            dn: format!("uid={uid},ou=people,dc=example,dc=org"),
            object_classes: vec!["inetOrgPerson".into(), "posixAccount".into()],
            uid: vec![uid.into()],
            uid_number: vec![uid_number.into()],
            gid_number: vec![uid_number.into()],
            member_of: member_of.iter().map(|dn| dn.to_string()).collect(),
        }
    }

    fn group(member: &[&str], member_uid: &[&str]) -> GroupEntry {
        GroupEntry {
            member: member.iter().map(|dn| dn.to_string()).collect(),
            member_uid: member_uid.iter().map(|uid| uid.to_string()).collect(),
        }
    }

    fn uids(users: &PosixUsers) -> Vec<&str> {
        users.users.iter().map(|user| user.uid.as_str()).collect()
    }

    fn reasons(users: &PosixUsers) -> Vec<(&str, &str)> {
        users
            .unusable
            .iter()
            .map(|user| (user.dn.as_str(), user.reason.as_str()))
            .collect()
    }

    #[test]
    fn people_come_from_member_member_uid_and_member_of_and_count_once() {
        let mut not_posix = account("printer", "10009", &[STAFF]);
        not_posix.object_classes = vec!["inetOrgPerson".into()];
        let accounts = [
            account("listed", "10001", &[]),
            account("by-uid", "10002", &[]),
            account("freeipa", "10003", &["CN=Staff, ou=Groups, dc=example, dc=org"]),
            // Named by all three: once.
            account("everywhere", "10004", &[STAFF]),
            account("other", "10005", &["cn=finance,ou=groups,dc=example,dc=org"]),
            // memberUid is case-exact.
            account("casey", "10006", &[]),
            not_posix,
        ];
        let staff = group(
            &[
                "UID=Listed,OU=people,DC=example,DC=org",
                "uid=everywhere,ou=people,dc=example,dc=org",
                "uid=printer,ou=people,dc=example,dc=org",
            ],
            &["by-uid", "everywhere", "Casey", "nobody-by-that-name"],
        );
        let users = select_posix_users(&accounts, &staff, STAFF);
        assert_eq!(uids(&users), ["by-uid", "everywhere", "freeipa", "listed"]);
        assert_eq!(
            users.users[1],
            PosixUser {
                dn: "uid=everywhere,ou=people,dc=example,dc=org".into(),
                uid: "everywhere".into(),
                uid_number: 10004,
                gid_number: 10004,
            }
        );
        assert!(users.unusable.is_empty(), "{:?}", users.unusable);
    }

    #[test]
    fn users_sort_by_uid_not_by_dn() {
        let mut zed = account("aaron", "10001", &[STAFF]);
        zed.dn = "cn=Zed Aaron,ou=people,dc=example,dc=org".into();
        let accounts = [account("bea", "10002", &[STAFF]), zed];
        let users = select_posix_users(&accounts, &GroupEntry::default(), STAFF);
        assert_eq!(uids(&users), ["aaron", "bea"]);
    }

    #[test]
    fn people_who_cannot_have_a_home_are_reported_with_the_reason() {
        let with_numbers = |uid: &str, uid_number: &[&str], gid_number: &[&str]| AccountEntry {
            uid_number: uid_number.iter().map(|value| value.to_string()).collect(),
            gid_number: gid_number.iter().map(|value| value.to_string()).collect(),
            ..account(uid, "0", &[STAFF])
        };
        let with_uid = |rdn: &str, uid_values: &[&str]| AccountEntry {
            dn: format!("cn={rdn},ou=people,dc=example,dc=org"),
            uid: uid_values.iter().map(|value| value.to_string()).collect(),
            ..account("x", "10000", &[STAFF])
        };
        let long_name = "n".repeat(HOME_NAME_BYTES_MAX + 1);
        let longest_name = "n".repeat(HOME_NAME_BYTES_MAX);
        let accounts = [
            with_numbers("a-root", &["0"], &["0"]),
            with_numbers("b-no-uid-number", &[], &["100"]),
            with_numbers("c-no-gid-number", &["10003"], &[]),
            with_numbers("d-word", &["ten"], &["100"]),
            with_numbers("e-plus", &["+10005"], &["100"]),
            with_numbers("f-negative", &["10006"], &["-2"]),
            with_numbers("g-minus-one", &["4294967295"], &["100"]),
            with_numbers("h-too-big", &["4294967296"], &["100"]),
            with_numbers("i-two-numbers", &["10009", "10010"], &["100"]),
            with_numbers("j-space", &[" 10011"], &["100"]),
            with_numbers("k-largest", &["4294967294"], &["4294967294"]),
            with_uid("l-no-uid", &[]),
            with_uid("m-empty", &[""]),
            with_uid("n-dot", &["."]),
            with_uid("o-dotdot", &[".."]),
            with_uid("p-slash", &["ev/il"]),
            with_uid("q-nul", &["ev\0il"]),
            with_uid("r-long", &[&long_name]),
            with_uid("s-two-uids", &["sam", "samuel"]),
            with_uid("t-longest", &[&longest_name]),
        ];
        let users = select_posix_users(&accounts, &GroupEntry::default(), STAFF);
        assert_eq!(uids(&users), ["k-largest", longest_name.as_str()]);
        assert_eq!(
            (users.users[0].uid_number, users.users[0].gid_number),
            (u32::MAX - 1, u32::MAX - 1)
        );
        let got: Vec<(String, &str)> = reasons(&users)
            .into_iter()
            .map(|(dn, reason)| (dn.split(',').next().unwrap().to_string(), reason))
            .collect();
        let expected = [
            ("cn=l-no-uid", "has no uid".to_string()),
            ("cn=m-empty", "uid is empty".into()),
            ("cn=n-dot", "uid \".\" is not a folder name".into()),
            ("cn=o-dotdot", "uid \"..\" is not a folder name".into()),
            ("cn=p-slash", "uid \"ev/il\" contains '/'".into()),
            ("cn=q-nul", "uid \"ev\\0il\" contains NUL".into()),
            (
                "cn=r-long",
                "uid is 256 bytes long; a folder name holds at most 255".into(),
            ),
            (
                "cn=s-two-uids",
                "has 2 uid values; which names the home is unclear".into(),
            ),
            ("uid=a-root", "uidNumber is 0 (root)".into()),
            ("uid=b-no-uid-number", "has no uidNumber".into()),
            ("uid=c-no-gid-number", "has no gidNumber".into()),
            (
                "uid=d-word",
                "uidNumber \"ten\" is not a number from 0 to 4294967294".into(),
            ),
            (
                "uid=e-plus",
                "uidNumber \"+10005\" is not a number from 0 to 4294967294".into(),
            ),
            (
                "uid=f-negative",
                "gidNumber \"-2\" is not a number from 0 to 4294967294".into(),
            ),
            (
                "uid=g-minus-one",
                "uidNumber \"4294967295\" is not a number from 0 to 4294967294".into(),
            ),
            (
                "uid=h-too-big",
                "uidNumber \"4294967296\" is not a number from 0 to 4294967294".into(),
            ),
            ("uid=i-two-numbers", "has 2 uidNumber values".into()),
            (
                "uid=j-space",
                "uidNumber \" 10011\" is not a number from 0 to 4294967294".into(),
            ),
        ];
        let expected: Vec<(String, &str)> = expected
            .iter()
            .map(|(rdn, reason)| (rdn.to_string(), reason.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn two_accounts_with_one_uid_get_no_home() {
        let mut twin = account("alice", "20001", &[STAFF]);
        twin.dn = "uid=alice,ou=contractors,dc=example,dc=org".into();
        let accounts = [
            account("alice", "10001", &[STAFF]),
            twin,
            account("bob", "10002", &[STAFF]),
        ];
        let users = select_posix_users(&accounts, &GroupEntry::default(), STAFF);
        assert_eq!(uids(&users), ["bob"]);
        assert_eq!(
            reasons(&users),
            [
                (
                    "uid=alice,ou=contractors,dc=example,dc=org",
                    "uid \"alice\" is also the uid of uid=alice,ou=people,dc=example,dc=org"
                ),
                (
                    "uid=alice,ou=people,dc=example,dc=org",
                    "uid \"alice\" is also the uid of uid=alice,ou=contractors,dc=example,dc=org"
                ),
            ]
        );
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
