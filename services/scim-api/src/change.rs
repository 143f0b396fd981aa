//! The new document a PUT or PATCH makes of the current one, for users and groups alike.

use rollcall_scim::{limits, patch, resource, PatchRequest, ResourceType};
use serde_json::Value;

use crate::error::ApiError;

/// A PUT body or a PATCH request.
pub(crate) enum Change {
    /// PUT: the whole new document.
    Replace(Value),
    /// PATCH: operations on the current document.
    Patch(PatchRequest),
}

impl Change {
    /// Whether the change may touch `attribute` (then, for a unique attribute, its claim is
    /// checked before anything is appended): a PUT always may; a PATCH may when its body
    /// names the attribute anywhere (a path, a filter, a value object's key).
    pub(crate) fn may_touch(&self, attribute: &str, body: &Value) -> bool {
        matches!(self, Change::Replace(_))
            || body
                .to_string()
                .to_ascii_lowercase()
                .contains(&attribute.to_ascii_lowercase())
    }

    /// The document after the change.
    pub(crate) fn apply(&self, rt: &ResourceType, current: &Value) -> Result<Value, ApiError> {
        match self {
            Change::Replace(body) => Ok(resource::replace(rt, current, body.clone())?),
            Change::Patch(request) => {
                let next = patch::apply(rt, current, request)?.resource;
                // PATCH values are held to the limits as POST and PUT bodies are.
                limits::check_resource(rt, &next, Some(current))?;
                Ok(next)
            }
        }
    }
}
