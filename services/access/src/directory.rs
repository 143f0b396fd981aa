//! The access service's decision state: every user's and group's access facts, exactly as the
//! access bucket on NATS holds them, applied in the bucket's order.

use std::collections::HashMap;

use rollcall_eventlog::access::{parse_key, AccessCheckpoint, AccessKey, GroupAccess, UserAccess};
use uuid::Uuid;

use crate::policy::GroupLookup;

/// Users and groups by tenant and id, and the last event sequence applied.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: HashMap<(String, Uuid), UserAccess>,
    groups: HashMap<(String, Uuid), GroupAccess>,
    applied: u64,
}

impl GroupLookup for Directory {
    fn group(&self, tenant: &str, id: &Uuid) -> Option<&GroupAccess> {
        self.groups.get(&(tenant.to_owned(), *id))
    }
}

impl Directory {
    /// A user.
    pub fn user(&self, tenant: &str, id: &Uuid) -> Option<&UserAccess> {
        self.users.get(&(tenant.to_owned(), *id))
    }

    /// The first user of `tenant` that `matches` (sign-in; a scan, as sign-ins are rare).
    pub fn find_user(
        &self,
        tenant: &str,
        matches: impl Fn(&UserAccess) -> bool,
    ) -> Option<&UserAccess> {
        self.users
            .iter()
            .find(|((t, _), user)| t == tenant && matches(user))
            .map(|(_, user)| user)
    }

    /// The last event sequence whose effects are applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// How many users and groups are held.
    pub fn size(&self) -> (usize, usize) {
        (self.users.len(), self.groups.len())
    }

    /// Applies one bucket entry (`None`: the key was deleted). Returns the new checkpoint when
    /// the entry was one. Unreadable entries are ignored (and reported by the caller).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<Option<u64>, String> {
        match (parse_key(key), value) {
            (Some(AccessKey::Checkpoint), Some(bytes)) => {
                let checkpoint: AccessCheckpoint =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                self.applied = self.applied.max(checkpoint.sequence);
                Ok(Some(self.applied))
            }
            (Some(AccessKey::User(tenant, id)), Some(bytes)) => {
                let user: UserAccess =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                self.users.insert((tenant, id), user);
                Ok(None)
            }
            (Some(AccessKey::User(tenant, id)), None) => {
                self.users.remove(&(tenant, id));
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), Some(bytes)) => {
                let group: GroupAccess =
                    serde_json::from_slice(bytes).map_err(|e| format!("{key}: {e}"))?;
                self.groups.insert((tenant, id), group);
                Ok(None)
            }
            (Some(AccessKey::Group(tenant, id)), None) => {
                self.groups.remove(&(tenant, id));
                Ok(None)
            }
            (Some(AccessKey::Checkpoint), None) => Ok(None),
            (None, _) => Err(format!("unknown key {key:?}")),
        }
    }
}
