//! `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas` (RFC 7644 §4), generated from the
//! schema definitions. They describe no tenant's data and need no token.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use rollcall_scim::{discovery, schema, ScimError};

use crate::error::ApiError;
use crate::http::{self, RequestInfo};

/// `GET /ServiceProviderConfig`
pub async fn service_provider_config(info: RequestInfo) -> Response {
    http::scim(
        StatusCode::OK,
        &discovery::service_provider_config(&info.base),
        None,
        None,
    )
}

/// `GET /ResourceTypes`
pub async fn resource_types(info: RequestInfo) -> Response {
    http::scim(
        StatusCode::OK,
        &discovery::resource_types(&info.base).to_json(),
        None,
        None,
    )
}

/// `GET /ResourceTypes/{name}`
pub async fn resource_type(
    info: RequestInfo,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rt = schema::resource_type(&name)
        .ok_or_else(|| ScimError::not_found(format!("no resource type {name}")))?;
    Ok(http::scim(
        StatusCode::OK,
        &discovery::resource_type(rt, &info.base),
        None,
        None,
    ))
}

/// `GET /Schemas`
pub async fn schemas(info: RequestInfo) -> Response {
    http::scim(
        StatusCode::OK,
        &discovery::schemas(&info.base).to_json(),
        None,
        None,
    )
}

/// `GET /Schemas/{id}`
pub async fn schema(info: RequestInfo, Path(id): Path<String>) -> Result<Response, ApiError> {
    let schema = discovery::find_schema(&id)
        .ok_or_else(|| ScimError::not_found(format!("no schema {id}")))?;
    Ok(http::scim(
        StatusCode::OK,
        &discovery::schema(schema, &info.base),
        None,
        None,
    ))
}
