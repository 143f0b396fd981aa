//! The discovery documents (RFC 7644 §4): `/ServiceProviderConfig`, `/ResourceTypes` and
//! `/Schemas`, generated from the schema definitions so that they advertise exactly what
//! Rollcall stores.

use serde_json::{json, Map, Value};

use crate::list::{ListResponse, MAX_COUNT};
use crate::schema::{Attribute, AttributeType, ResourceType, Schema, RESOURCE_TYPES};

/// Schema URI of the service provider configuration.
pub const SERVICE_PROVIDER_CONFIG_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
/// Schema URI of a resource type document.
pub const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
/// Schema URI of a schema document.
pub const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

fn trim(base_url: &str) -> &str {
    base_url.trim_end_matches('/')
}

/// `GET /ServiceProviderConfig`: PATCH, filtering, sorting and ETags supported; bulk and
/// password change not; bearer-token authentication.
pub fn service_provider_config(base_url: &str) -> Value {
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG_SCHEMA],
        "documentationUri": "https://github.com/rollcall-dev/rollcall#readme",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_COUNT},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "A per-tenant secret token sent as Authorization: Bearer <token>",
            "primary": true
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{}/ServiceProviderConfig", trim(base_url))
        }
    })
}

/// One resource type document (`GET /ResourceTypes/User`).
pub fn resource_type(rt: &ResourceType, base_url: &str) -> Value {
    let extensions: Vec<Value> = rt
        .extensions
        .iter()
        .map(|schema| json!({"schema": schema.id, "required": false}))
        .collect();
    let mut document = json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": rt.name,
        "name": rt.name,
        "endpoint": rt.endpoint,
        "description": rt.description,
        "schema": rt.schema.id,
        "meta": {
            "resourceType": "ResourceType",
            "location": format!("{}/ResourceTypes/{}", trim(base_url), rt.name)
        }
    });
    if !extensions.is_empty() {
        document["schemaExtensions"] = Value::Array(extensions);
    }
    document
}

/// `GET /ResourceTypes`.
pub fn resource_types(base_url: &str) -> ListResponse {
    let documents: Vec<Value> = RESOURCE_TYPES
        .iter()
        .map(|rt| resource_type(rt, base_url))
        .collect();
    ListResponse::new(documents.len(), 1, documents)
}

/// Every schema Rollcall serves: each resource type's core schema and its extensions.
pub fn all_schemas() -> Vec<&'static Schema> {
    let mut schemas: Vec<&'static Schema> = Vec::new();
    for schema in RESOURCE_TYPES.iter().flat_map(|rt| rt.schemas()) {
        if !schemas.iter().any(|known| std::ptr::eq(*known, schema)) {
            schemas.push(schema);
        }
    }
    schemas
}

/// The schema with this URI, compared without case.
pub fn find_schema(id: &str) -> Option<&'static Schema> {
    all_schemas()
        .into_iter()
        .find(|schema| schema.id.eq_ignore_ascii_case(id))
}

/// One schema document (`GET /Schemas/{id}`).
pub fn schema(schema: &Schema, base_url: &str) -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": schema.id,
        "name": schema.name,
        "description": schema.description,
        "attributes": schema.attributes.iter().map(attribute).collect::<Vec<_>>(),
        "meta": {
            "resourceType": "Schema",
            "location": format!("{}/Schemas/{}", trim(base_url), schema.id)
        }
    })
}

/// `GET /Schemas`.
pub fn schemas(base_url: &str) -> ListResponse {
    let documents: Vec<Value> = all_schemas()
        .into_iter()
        .map(|s| schema(s, base_url))
        .collect();
    ListResponse::new(documents.len(), 1, documents)
}

fn attribute(attribute: &Attribute) -> Value {
    let mut map = Map::new();
    map.insert("name".into(), attribute.name.into());
    map.insert("type".into(), attribute.kind.as_str().into());
    map.insert("multiValued".into(), attribute.multi_valued.into());
    map.insert("description".into(), attribute.description.into());
    map.insert("required".into(), attribute.required.into());
    map.insert("caseExact".into(), attribute.case_exact.into());
    map.insert("mutability".into(), attribute.mutability.as_str().into());
    map.insert("returned".into(), attribute.returned.as_str().into());
    map.insert("uniqueness".into(), attribute.uniqueness.as_str().into());
    if !attribute.canonical_values.is_empty() {
        map.insert("canonicalValues".into(), attribute.canonical_values.into());
    }
    if attribute.kind == AttributeType::Reference {
        map.insert("referenceTypes".into(), attribute.reference_types.into());
    }
    if attribute.kind == AttributeType::Complex {
        let subs: Vec<Value> = attribute
            .sub_attributes
            .iter()
            .map(self::attribute)
            .collect();
        map.insert("subAttributes".into(), subs.into());
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};

    #[test]
    fn schemas_lists_user_enterprise_user_and_group_and_nothing_else() {
        let list = schemas("https://rollcall.example/scim/v2/").to_json();
        let ids: Vec<_> = list["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [USER_SCHEMA, ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA]);
        assert_eq!(
            list["Resources"][0]["meta"]["location"],
            format!("https://rollcall.example/scim/v2/Schemas/{USER_SCHEMA}")
        );
    }

    #[test]
    fn the_password_is_advertised_write_only_and_never_returned() {
        let user = schema(find_schema(USER_SCHEMA).unwrap(), "");
        let password = user["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "password")
            .unwrap();
        assert_eq!(password["mutability"], "writeOnly");
        assert_eq!(password["returned"], "never");
    }

    #[test]
    fn manager_is_a_complex_reference_in_the_enterprise_extension() {
        let enterprise = schema(find_schema(ENTERPRISE_USER_SCHEMA).unwrap(), "");
        let manager = enterprise["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "manager")
            .unwrap();
        assert_eq!(manager["type"], "complex");
        let reference = manager["subAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "$ref")
            .unwrap();
        assert_eq!(reference["referenceTypes"], serde_json::json!(["User"]));
    }

    #[test]
    fn resource_types_name_their_extensions() {
        let list = resource_types("http://x").to_json();
        assert_eq!(list["totalResults"], 2);
        assert_eq!(
            list["Resources"][0]["schemaExtensions"][0]["schema"],
            ENTERPRISE_USER_SCHEMA
        );
        assert_eq!(
            service_provider_config("http://x")["filter"]["maxResults"],
            MAX_COUNT
        );
    }
}
