//! The one SCIM error type (RFC 7644 §3.12): an HTTP status, an optional `scimType` and a
//! `detail` that tells the client what to fix.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The media type of every SCIM request and response body (RFC 7644 §8.1).
pub const MEDIA_TYPE: &str = "application/scim+json";

/// The schema URI of a SCIM error body.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The `scimType` detail error keywords of RFC 7644 §3.12, Table 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScimType {
    /// The filter syntax was invalid or the filter cannot be evaluated.
    InvalidFilter,
    /// The filter would return more results than the server allows.
    TooMany,
    /// One or more attribute values are already in use or reserved.
    Uniqueness,
    /// The modification is not compatible with the attribute's mutability.
    Mutability,
    /// The request body structure was invalid or did not conform to the schema.
    InvalidSyntax,
    /// The `path` attribute was invalid or malformed.
    InvalidPath,
    /// The `path` did not yield an attribute or value that could be operated on.
    NoTarget,
    /// A required value was missing, or the value given was not compatible.
    InvalidValue,
    /// The specified SCIM protocol version is not supported.
    InvalidVers,
    /// The request cannot be completed because of sensitive information in the URI.
    Sensitive,
}

impl ScimType {
    /// The keyword as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
        }
    }
}

impl std::fmt::Display for ScimType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SCIM error: what the HTTP layer turns into a response with [`MEDIA_TYPE`].
///
/// Serializes to the RFC 7644 §3.12 body, with `status` as a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScimError {
    /// The HTTP status code.
    pub status: u16,
    /// The RFC 7644 detail error keyword, where the RFC defines one for the case.
    pub scim_type: Option<ScimType>,
    /// A human-readable message telling the client what was wrong and what to change.
    pub detail: String,
}

/// The longest `detail` an error carries, in characters.
pub const MAX_DETAIL_CHARS: usize = 500;

impl ScimError {
    /// An error with any status and keyword.
    /// A detail longer than [`MAX_DETAIL_CHARS`] is cut there: details quote what the client
    /// sent (an unknown attribute name, an op), and a client must not get its megabyte back.
    pub fn new(status: u16, scim_type: Option<ScimType>, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if let Some((end, _)) = detail.char_indices().nth(MAX_DETAIL_CHARS) {
            detail.truncate(end);
            detail.push('…');
        }
        Self {
            status,
            scim_type,
            detail,
        }
    }

    /// `400` with the given keyword.
    pub fn bad_request(scim_type: ScimType, detail: impl Into<String>) -> Self {
        Self::new(400, Some(scim_type), detail)
    }

    /// `400 invalidFilter`.
    pub fn invalid_filter(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidFilter, detail)
    }

    /// `400 invalidSyntax`.
    pub fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidSyntax, detail)
    }

    /// `400 invalidPath`.
    pub fn invalid_path(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidPath, detail)
    }

    /// `400 noTarget`.
    pub fn no_target(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::NoTarget, detail)
    }

    /// `400 invalidValue`.
    pub fn invalid_value(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidValue, detail)
    }

    /// `400 mutability`.
    pub fn mutability(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::Mutability, detail)
    }

    /// `409 uniqueness` (RFC 7644 §3.3).
    pub fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(409, Some(ScimType::Uniqueness), detail)
    }

    /// `404` without a keyword.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }

    /// The error as a JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing a struct of strings into a Value cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Serialize for ScimError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schemas", &[ERROR_SCHEMA])?;
        // RFC 7644 §3.12: "status" is a string.
        map.serialize_entry("status", &self.status.to_string())?;
        if let Some(scim_type) = self.scim_type {
            map.serialize_entry("scimType", scim_type.as_str())?;
        }
        map.serialize_entry("detail", &self.detail)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_quoting_a_huge_client_value_is_cut() {
        let key = "k".repeat(100_000);
        let error = ScimError::invalid_syntax(format!("{key:?} is not an attribute"));
        assert_eq!(error.detail.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(error.detail.ends_with('…'));
        assert_eq!(ScimError::invalid_syntax("short").detail, "short");
    }
    use serde_json::json;

    #[test]
    fn error_body_has_status_as_a_string_and_the_keyword() {
        let error = ScimError::invalid_filter("unexpected end of filter at position 12");
        assert_eq!(
            error.to_json(),
            json!({
                "schemas": [ERROR_SCHEMA],
                "status": "400",
                "scimType": "invalidFilter",
                "detail": "unexpected end of filter at position 12"
            })
        );
    }

    #[test]
    fn not_found_has_no_keyword() {
        let body = ScimError::not_found("User 42 not found").to_json();
        assert_eq!(body["status"], "404");
        assert!(body.get("scimType").is_none());
    }
}
