//! Client authentication: tokens with roles. Below both the client and the server:
//! the wire preamble a client opens its connection with ([`preamble`]), the roles
//! and what each may do ([`Role`]), tokens and their hashes ([`token`]), and the
//! table of hashes a node checks them against ([`keyring`]).
//!
//! A node with an auth file refuses, before anything else, a client connection
//! whose token it does not know; a known token's role then bounds every request on
//! that connection. A node without one serves every client as today, except the
//! membership commands of the client port (those need an admin token).

pub mod keyring;
pub mod preamble;
pub mod token;

pub use keyring::{Keyring, KeyringError};

use serde::{Deserialize, Serialize};

/// What a token may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads: get, set members, counter get, status, ring, health.
    Read,
    /// Also writes: put, delete, counter add, set add and remove.
    Write,
    /// Also operations: repair, leave, remove, drain.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    /// Its name in auth files, flags and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    fn code(self) -> u8 {
        match self {
            Role::Read => 1,
            Role::Write => 2,
            Role::Admin => 3,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one client connection may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The node has no auth file: everything but the client port's membership
    /// commands.
    Open,
    /// The connection proved a token.
    Token {
        /// The token's name in the auth file.
        name: String,
        /// Its role.
        role: Role,
        /// Its hash: how the auth file in force is asked again, per request
        /// (a token taken out, or given another role, counts at once).
        hash: [u8; 32],
    },
}

impl Access {
    /// Whether this connection may do what needs `needed`; the refusal's reason
    /// otherwise (naming `what`, the operation).
    ///
    /// # Errors
    /// The one-line reason of the refusal.
    pub fn allows(&self, needed: Role, what: &str) -> Result<(), String> {
        match self {
            Access::Open => Ok(()),
            Access::Token { role, .. } if *role >= needed => Ok(()),
            Access::Token { name, role, .. } => Err(format!(
                "token {name:?} has role {role}; {what} needs {needed}"
            )),
        }
    }

    /// Whether this connection may change membership (leave, remove, drain): only
    /// with an admin token. Without an auth file these stay behind the cluster
    /// secret, as they were before tokens.
    ///
    /// # Errors
    /// The one-line reason of the refusal.
    pub fn allows_membership(&self, what: &str) -> Result<(), String> {
        match self {
            Access::Open => Err(format!(
                "{what} over the client port needs an admin token, and this node has no --auth-file: give the cluster secret instead"
            )),
            token => token.allows(Role::Admin, what),
        }
    }
}

/// Why a client connection was refused: the label of the failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token where the node needs one (or no preamble at all).
    Missing,
    /// A token the node does not know.
    Unknown,
    /// A known token whose role is too small for a request.
    Role,
}

impl Refusal {
    /// Every kind, in label order.
    pub const ALL: [Refusal; 3] = [Refusal::Missing, Refusal::Unknown, Refusal::Role];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Unknown => "unknown",
            Refusal::Role => "role",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_weaker_ones_and_open_access_excludes_admin() {
        let writer = Access::Token {
            name: "ci".into(),
            role: Role::Write,
            hash: [1; 32],
        };
        assert!(writer.allows(Role::Read, "get").is_ok());
        assert!(writer.allows(Role::Write, "put").is_ok());
        let refused = writer.allows(Role::Admin, "repair").expect_err("admin");
        assert!(
            refused.contains("role write; repair needs admin"),
            "{refused}"
        );
        assert!(Access::Open.allows(Role::Admin, "repair").is_ok());
        assert!(Access::Open.allows_membership("leave").is_err());
        assert!(writer.allows_membership("leave").is_err());
        let admin = Access::Token {
            name: "ops".into(),
            role: Role::Admin,
            hash: [2; 32],
        };
        assert!(admin.allows_membership("drain").is_ok());
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
            assert_eq!(Role::from_code(r.code()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::from_code(0), None);
    }
}
