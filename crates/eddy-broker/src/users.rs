//! Users, their tags, and per-vhost permissions, as RabbitMQ has them.
//!
//! Passwords are kept as RabbitMQ's `rabbit_password_hashing_sha256` hashes: base64 of a
//! 4-byte random salt followed by SHA-256(salt ‖ password), so definitions exported from
//! RabbitMQ import here with their users able to log in, and the other way round. Users and
//! permissions live in `users.json` in the data directory (written atomically, fsynced).
//!
//! A permission is three regular expressions per (user, vhost), matched (unanchored, as
//! RabbitMQ) against the name of the resource an operation touches: *configure* to declare or
//! delete it, *write* to publish to it or bind to it, *read* to consume, get, purge or bind
//! from it. The default exchange is named `amq.default` for the check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use parking_lot::RwLock;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// The hashing scheme of stored passwords (RabbitMQ's name for it).
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// Longest user name, password or pattern accepted.
const MAX_FIELD: usize = 4096;

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// base64(salt ‖ SHA-256(salt ‖ password)); empty: no password login.
    pub password_hash: String,
    /// Always [`HASHING_ALGORITHM`].
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    /// administrator, monitoring, management, policymaker, …
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_algorithm() -> String {
    HASHING_ALGORITHM.to_owned()
}

impl User {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// What a user may do in a vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Permission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Names the user may declare and delete.
    pub configure: String,
    /// Names the user may publish to (and bind to).
    pub write: String,
    /// Names the user may consume from (and bind from).
    pub read: String,
}

/// The kind of access an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare, delete.
    Configure,
    /// Publish, bind to.
    Write,
    /// Consume, get, purge, bind from.
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// A permission with its patterns compiled.
#[derive(Debug)]
struct Compiled {
    perm: Permission,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

/// `.*` matches everything: no regex needed on the hot path.
fn compile(pattern: &str) -> Result<Option<Regex>> {
    if pattern == ".*" {
        return Ok(None);
    }
    if pattern.len() > MAX_FIELD {
        return Err(BrokerError::PreconditionFailed(
            "permission pattern too long".into(),
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(Some)
        .map_err(|e| {
            BrokerError::PreconditionFailed(format!(
                "permission pattern {pattern:?} is not a regular expression: {e}"
            ))
        })
}

impl Compiled {
    fn new(perm: Permission) -> Result<Compiled> {
        Ok(Compiled {
            configure: compile(&perm.configure)?,
            write: compile(&perm.write)?,
            read: compile(&perm.read)?,
            perm,
        })
    }
    fn allows(&self, access: Access, name: &str) -> bool {
        let (re, pattern) = match access {
            Access::Configure => (&self.configure, &self.perm.configure),
            Access::Write => (&self.write, &self.perm.write),
            Access::Read => (&self.read, &self.perm.read),
        };
        // an empty pattern grants nothing (RabbitMQ's way to deny)
        match re {
            _ if pattern.is_empty() => false,
            None => true,
            Some(re) => re.is_match(name),
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    users: Vec<User>,
    permissions: Vec<Permission>,
}

#[derive(Default)]
struct Inner {
    users: BTreeMap<String, User>,
    perms: BTreeMap<(String, String), Arc<Compiled>>,
}

/// The user store.
pub struct Users {
    path: PathBuf,
    inner: RwLock<Inner>,
    /// Users that may only log in from loopback addresses.
    loopback_only: Vec<String>,
    /// Held while a snapshot is taken and written: writes never interleave, and the last one
    /// written holds every change made before it began.
    save_lock: parking_lot::Mutex<()>,
}

/// Hash `password` with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(ctx.finish().as_ref());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches the stored `hash` (the digests compared in constant time).
pub fn check_password(hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let want = hash_with_salt(&raw[..4], password);
    let want = base64::engine::general_purpose::STANDARD
        .decode(want)
        .unwrap_or_default();
    want.len() == raw.len() && want.iter().zip(&raw).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_FIELD || s.chars().any(char::is_control) {
        return Err(BrokerError::PreconditionFailed(format!(
            "{what} must be 1 to {MAX_FIELD} bytes without control characters"
        )));
    }
    Ok(())
}

impl Users {
    /// Load `users.json` from `data_dir`; on first start, create it with `initial` users
    /// (administrators with full permissions on `/`).
    pub(crate) fn open(
        data_dir: &std::path::Path,
        initial: &[(String, String)],
        loopback_only: Vec<String>,
    ) -> Result<Users> {
        for (n, _) in initial.iter().filter(|(_, p)| p.is_empty()) {
            tracing::warn!(
                user = n.as_str(),
                "configured user has a blank password: it cannot log in (blank passwords are refused)"
            );
        }
        let path = data_dir.join("users.json");
        let stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BrokerError::Internal(format!("{} is not readable: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                users: initial
                    .iter()
                    .map(|(n, p)| User {
                        name: n.clone(),
                        password_hash: hash_password(p),
                        hashing_algorithm: HASHING_ALGORITHM.into(),
                        tags: vec!["administrator".into()],
                    })
                    .collect(),
                permissions: initial
                    .iter()
                    .map(|(n, _)| Permission {
                        user: n.clone(),
                        vhost: "/".into(),
                        configure: ".*".into(),
                        write: ".*".into(),
                        read: ".*".into(),
                    })
                    .collect(),
            },
            Err(e) => {
                return Err(BrokerError::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let mut fresh = !path.exists();
        let users = Users {
            path,
            inner: RwLock::new(Inner::default()),
            loopback_only,
            save_lock: parking_lot::Mutex::new(()),
        };
        {
            let mut inner = users.inner.write();
            for u in stored.users {
                inner.users.insert(u.name.clone(), u);
            }
            for p in stored.permissions {
                let key = (p.user.clone(), p.vhost.clone());
                inner.perms.insert(key, Arc::new(Compiled::new(p)?));
            }
        }
        // users from the configuration exist (created with full permissions on `/` if they
        // are missing; never overwritten: a password changed over the API stays changed)
        {
            let mut inner = users.inner.write();
            for (n, p) in initial {
                if !inner.users.contains_key(n) {
                    inner.users.insert(
                        n.clone(),
                        User {
                            name: n.clone(),
                            password_hash: hash_password(p),
                            hashing_algorithm: HASHING_ALGORITHM.into(),
                            tags: vec!["administrator".into()],
                        },
                    );
                    let full = Permission {
                        user: n.clone(),
                        vhost: "/".into(),
                        configure: ".*".into(),
                        write: ".*".into(),
                        read: ".*".into(),
                    };
                    inner
                        .perms
                        .insert((n.clone(), "/".into()), Arc::new(Compiled::new(full)?));
                    fresh = true;
                }
            }
        }
        if fresh {
            users.save()?;
        }
        Ok(users)
    }

    fn save(&self) -> Result<()> {
        let _one_at_a_time = self.save_lock.lock();
        let stored = {
            let inner = self.inner.read();
            Stored {
                users: inner.users.values().cloned().collect(),
                permissions: inner.perms.values().map(|c| c.perm.clone()).collect(),
            }
        };
        let dir = self
            .path
            .parent()
            .expect("users.json lives in the data dir");
        crate::metadata::write_atomically(
            dir,
            "users.json",
            &serde_json::to_vec_pretty(&stored).unwrap_or_default(),
        )
        .map_err(|e| BrokerError::Internal(format!("cannot write users.json: {e}")))
    }

    /// Check a password login. A blank password is refused whatever is stored (RabbitMQ's
    /// internal backend does the same); loopback-only users (`guest`) are refused from
    /// elsewhere.
    pub fn authenticate(&self, user: &str, password: &str, from_loopback: bool) -> Result<User> {
        if password.is_empty() {
            return Err(BrokerError::AccessRefused(format!(
                "user '{user}' attempted to log in with a blank password, which is prohibited"
            )));
        }
        let found = self.inner.read().users.get(user).cloned();
        let Some(u) = found.filter(|u| check_password(&u.password_hash, password)) else {
            return Err(BrokerError::AccessRefused(format!(
                "invalid credentials for user '{user}'"
            )));
        };
        if !from_loopback && self.loopback_only.iter().any(|n| n == user) {
            return Err(BrokerError::AccessRefused(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
        Ok(u)
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> Option<User> {
        self.inner.read().users.get(name).cloned()
    }

    /// All users.
    pub fn list(&self) -> Vec<User> {
        self.inner.read().users.values().cloned().collect()
    }

    /// Create or replace a user (with a password, or a hash as exported by RabbitMQ).
    pub fn put(
        &self,
        name: &str,
        password: Option<&str>,
        password_hash: Option<&str>,
        tags: Vec<String>,
    ) -> Result<bool> {
        check_name("a user name", name)?;
        let hash = match (password, password_hash) {
            (Some(p), _) => {
                if p.len() > MAX_FIELD {
                    return Err(BrokerError::PreconditionFailed("password too long".into()));
                }
                hash_password(p)
            }
            (None, Some(h)) => {
                let ok = h.is_empty()
                    || base64::engine::general_purpose::STANDARD
                        .decode(h)
                        .is_ok_and(|raw| raw.len() == 36);
                if !ok {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "password_hash of user '{name}' is not a {HASHING_ALGORITHM} hash"
                    )));
                }
                h.to_owned()
            }
            (None, None) => match self.get(name) {
                Some(u) => u.password_hash,
                None => String::new(),
            },
        };
        let created = {
            let mut inner = self.inner.write();
            inner
                .users
                .insert(
                    name.to_owned(),
                    User {
                        name: name.to_owned(),
                        password_hash: hash,
                        hashing_algorithm: HASHING_ALGORITHM.into(),
                        tags,
                    },
                )
                .is_none()
        };
        self.save()?;
        Ok(created)
    }

    /// Delete a user and their permissions.
    pub fn delete(&self, name: &str) -> Result<()> {
        {
            let mut inner = self.inner.write();
            if inner.users.remove(name).is_none() {
                return Err(BrokerError::NotFound(format!("no user '{name}'")));
            }
            inner.perms.retain(|(u, _), _| u != name);
        }
        self.save()
    }

    /// All permissions.
    pub fn permissions(&self) -> Vec<Permission> {
        self.inner
            .read()
            .perms
            .values()
            .map(|c| c.perm.clone())
            .collect()
    }

    /// Set a user's permissions in a vhost.
    pub fn set_permission(&self, p: Permission) -> Result<()> {
        if !self.inner.read().users.contains_key(&p.user) {
            return Err(BrokerError::NotFound(format!("no user '{}'", p.user)));
        }
        let key = (p.user.clone(), p.vhost.clone());
        let c = Arc::new(Compiled::new(p)?);
        self.inner.write().perms.insert(key, c);
        self.save()
    }

    /// Remove a user's permissions in a vhost.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> Result<()> {
        let removed = self
            .inner
            .write()
            .perms
            .remove(&(user.to_owned(), vhost.to_owned()));
        if removed.is_none() {
            return Err(BrokerError::NotFound(format!(
                "no permissions for user '{user}' in vhost '{vhost}'"
            )));
        }
        self.save()
    }

    /// Forget every permission in a deleted vhost.
    pub(crate) fn vhost_deleted(&self, vhost: &str) -> Result<()> {
        self.inner.write().perms.retain(|(_, v), _| v != vhost);
        self.save()
    }

    /// Whether the user's `access` pattern in `vhost` is `.*` (every name allowed: callers may
    /// skip per-name checks).
    pub fn allows_all(&self, user: &str, vhost: &str, access: Access) -> bool {
        self.inner
            .read()
            .perms
            .get(&(user.to_owned(), vhost.to_owned()))
            .is_some_and(|p| {
                let pattern = match access {
                    Access::Configure => &p.perm.configure,
                    Access::Write => &p.perm.write,
                    Access::Read => &p.perm.read,
                };
                pattern == ".*"
            })
    }

    /// Whether the user has any permissions in `vhost` (needed to open it).
    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        self.inner
            .read()
            .perms
            .contains_key(&(user.to_owned(), vhost.to_owned()))
    }

    /// Check that `user` may do `access` to the `kind` (queue, exchange, topic, group) named
    /// `name` in `vhost`; the error is RabbitMQ's ACCESS_REFUSED text.
    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<()> {
        let perm = self
            .inner
            .read()
            .perms
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned();
        let name = if name.is_empty() && kind == "exchange" {
            "amq.default"
        } else {
            name
        };
        if perm.is_some_and(|p| p.allows(access, name)) {
            return Ok(());
        }
        Err(BrokerError::AccessRefused(format!(
            "{} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'",
            access.as_str()
        )))
    }
}

impl Users {
    /// The extra checks RabbitMQ makes for arguments that route messages elsewhere: a queue
    /// with `x-dead-letter-exchange` needs write on that exchange and read on the queue; an
    /// exchange with `alternate-exchange` needs write on the alternate and read on itself.
    pub fn check_declare_arguments(
        &self,
        user: &str,
        vhost: &str,
        kind: &str,
        name: &str,
        arguments: &amq_protocol::types::FieldTable,
    ) -> Result<()> {
        let key = if kind == "queue" {
            "x-dead-letter-exchange"
        } else {
            "alternate-exchange"
        };
        if let Some(target) = arguments
            .inner()
            .get(key)
            .and_then(crate::args::value_as_string)
        {
            self.check(user, vhost, Access::Write, "exchange", &target)?;
            self.check(user, vhost, Access::Read, kind, name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_hashes_verify() {
        // the example in RabbitMQ's documentation (passwords.html): "test12", salt 908DC60A
        assert!(check_password(
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
            "test12"
        ));
        let h = hash_password("s3cret");
        assert!(check_password(&h, "s3cret"));
        assert!(!check_password(&h, "s3creT"));
        assert!(!check_password("not base64!", "x"));
        assert_ne!(hash_password("s3cret"), h, "salted");
    }

    #[test]
    fn a_blank_password_never_logs_in() {
        let dir = tempfile::tempdir().unwrap();
        // as RabbitMQ: a user may be given a blank password (over the API or in the
        // configuration), but logging in with it is refused
        let users = Users::open(dir.path(), &[("blank".into(), String::new())], vec![]).unwrap();
        users
            .put("empty", Some(""), None, vec!["administrator".into()])
            .unwrap();
        for name in ["blank", "empty", "nobody"] {
            let e = users.authenticate(name, "", true).unwrap_err();
            assert!(e.to_string().contains("blank password"), "{name}: {e}");
        }
        users.put("empty", Some("pw"), None, vec![]).unwrap();
        assert!(users.authenticate("empty", "pw", true).is_ok());
        assert!(users.authenticate("empty", "", true).is_err());
    }

    #[test]
    fn permissions_match_unanchored_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(dir.path(), &[("guest".into(), "guest".into())], vec![]).unwrap();
        users
            .put("bob", Some("pw"), None, vec!["management".into()])
            .unwrap();
        users
            .set_permission(Permission {
                user: "bob".into(),
                vhost: "/".into(),
                configure: "^bob-".into(),
                write: "^$".into(),
                read: ".*".into(),
            })
            .unwrap();
        assert!(users
            .check("bob", "/", Access::Configure, "queue", "bob-1")
            .is_ok());
        assert!(users
            .check("bob", "/", Access::Configure, "queue", "x")
            .is_err());
        let e = users
            .check("bob", "/", Access::Write, "exchange", "")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "write access to exchange 'amq.default' in vhost '/' refused for user 'bob'"
        );
        assert!(users
            .check("bob", "/other", Access::Read, "queue", "q")
            .is_err());
        assert!(users.authenticate("bob", "pw", false).is_ok());
        assert!(users.authenticate("bob", "nope", true).is_err());
        // reopened from users.json
        let again = Users::open(dir.path(), &[], vec![]).unwrap();
        assert!(again.authenticate("bob", "pw", true).is_ok());
        assert!(again
            .check("bob", "/", Access::Configure, "queue", "x")
            .is_err());
        assert!(again
            .set_permission(Permission {
                user: "bob".into(),
                vhost: "/".into(),
                configure: "(".into(),
                write: "".into(),
                read: "".into(),
            })
            .is_err());
    }
}
