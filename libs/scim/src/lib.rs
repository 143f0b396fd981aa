//! rollcall-scim: the SCIM 2.0 protocol core (RFC 7643, RFC 7644) as Microsoft Entra ID speaks
//! it. Pure: no IO, no async, no clock. Every other part of Rollcall stands on it.
//!
//! - [`schema`]: the User, EnterpriseUser and Group schemas, as data;
//! - [`resource`]: client bodies checked and brought to canonical JSON;
//! - [`filter`] and [`matching`]: the filter grammar, its AST and its evaluation;
//! - [`patch`]: PATCH in both of Entra's dialects, atomic, with the list of [`change`]s;
//! - [`projection`] and [`list`]: `attributes`/`excludedAttributes`, `ListResponse`, paging, sorting;
//! - [`discovery`]: `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`;
//! - [`case`]: the one case folding every comparison without case uses;
//! - [`error`]: the one SCIM error type;
//! - [`limits`]: every limit on SCIM input.
#![warn(missing_docs)]

pub mod case;
pub mod change;
pub mod discovery;
pub mod error;
pub mod filter;
pub mod limits;
pub mod list;
pub mod matching;
pub mod patch;
pub mod projection;
pub mod resource;
pub mod schema;
pub mod value;

pub use change::Change;
pub use error::{ScimError, ScimType, MEDIA_TYPE};
pub use filter::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
pub use list::{ListResponse, Page, Query, QueryParams};
pub use patch::{PatchRequest, Patched};
pub use projection::Projection;
pub use schema::{ResourceType, GROUP_RESOURCE, USER_RESOURCE};
