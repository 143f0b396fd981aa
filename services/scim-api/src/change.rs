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
