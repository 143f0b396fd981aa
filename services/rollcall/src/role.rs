//! The roles a Rollcall process can take: the SCIM API, the projector, the access service and
//! the audit API. `rollcall serve` takes all four; `--roles` picks a subset, so that each role
//! can be scaled and placed on its own.

use std::fmt;
use std::str::FromStr;

/// One role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The SCIM API Entra provisions (HTTP).
    Scim,
    /// The projector: events into the read models and the access state (no HTTP listener).
    Projector,
    /// The access service: forward-auth, decisions, sign-in (HTTP).
    Access,
    /// The audit API and page (HTTP).
    Audit,
}

impl Role {
    /// Every role, in the order they are listed and started.
    pub const ALL: [Role; 4] = [Role::Scim, Role::Projector, Role::Access, Role::Audit];

    /// The role's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scim => "scim",
            Role::Projector => "projector",
            Role::Access => "access",
            Role::Audit => "audit",
        }
    }

    /// Whether the role serves HTTP on a listener of its own.
    pub fn has_listener(self) -> bool {
        !matches!(self, Role::Projector)
    }

    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a list of roles was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolesError {
    /// The list names no role.
    #[error(
        "no role given: name one or more of scim, projector, access, audit, separated by commas"
    )]
    Empty,
    /// An entry of the list is empty (`scim,,audit`).
    #[error("an empty entry in the list of roles: name one or more of scim, projector, access, audit, separated by commas")]
    EmptyEntry,
    /// An entry names no role.
    #[error("unknown role {0:?}: the roles are scim, projector, access and audit")]
    Unknown(String),
}

/// A set of roles.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// Every role (what `rollcall serve` runs by default).
    pub fn all() -> Self {
        Role::ALL.into_iter().collect()
    }

    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// The set with `role` added.
    pub fn with(self, role: Role) -> Self {
        Roles(self.0 | role.bit())
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL
            .into_iter()
            .filter(move |role| self.contains(*role))
    }

    /// Whether any role of the set serves HTTP on a listener of its own.
    pub fn has_listener(self) -> bool {
        self.iter().any(Role::has_listener)
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(roles: I) -> Self {
        roles.into_iter().fold(Roles::NONE, Roles::with)
    }
}

impl FromStr for Role {
    type Err = RolesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let name = text.trim();
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| RolesError::Unknown(name.to_owned()))
    }
}

impl FromStr for Roles {
    type Err = RolesError;

    /// Parses `scim,projector,access,audit` (any subset, any order; blanks around names and
    /// repeats are ignored).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Err(RolesError::Empty);
        }
        text.split(',')
            .map(|entry| match entry.trim() {
                "" => Err(RolesError::EmptyEntry),
                name => name.parse::<Role>(),
            })
            .collect()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_parses_and_prints_back() {
        let roles: Roles = "scim,projector,access,audit".parse().unwrap();
        assert_eq!(roles, Roles::all());
        assert_eq!(roles.to_string(), "scim,projector,access,audit");
    }

    #[test]
    fn a_subset_keeps_only_its_roles_in_any_order_and_case() {
        let roles: Roles = " Projector , scim ".parse().unwrap();
        assert!(roles.contains(Role::Scim) && roles.contains(Role::Projector));
        assert!(!roles.contains(Role::Access) && !roles.contains(Role::Audit));
        assert_eq!(roles.to_string(), "scim,projector");
        assert_eq!("audit,audit".parse::<Roles>().unwrap().to_string(), "audit");
    }

    #[test]
    fn an_unknown_role_is_named_in_the_error() {
        let error = "scim,web".parse::<Roles>().unwrap_err();
        assert_eq!(error, RolesError::Unknown("web".into()));
        assert!(error.to_string().contains("\"web\""), "{error}");
        assert!(error
            .to_string()
            .contains("scim, projector, access and audit"));
    }

    #[test]
    fn an_empty_list_or_entry_is_refused() {
        assert_eq!("".parse::<Roles>(), Err(RolesError::Empty));
        assert_eq!("  ".parse::<Roles>(), Err(RolesError::Empty));
        assert_eq!("scim,,audit".parse::<Roles>(), Err(RolesError::EmptyEntry));
        assert_eq!("scim,".parse::<Roles>(), Err(RolesError::EmptyEntry));
    }

    #[test]
    fn only_the_projector_has_no_listener() {
        assert!(!"projector".parse::<Roles>().unwrap().has_listener());
        assert!("projector,audit".parse::<Roles>().unwrap().has_listener());
        assert!(!Roles::NONE.has_listener());
    }
}
