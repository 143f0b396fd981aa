//! Query responses (RFC 7644 §3.4.2): `ListResponse`, pagination by `startIndex` and `count`,
//! sorting by `sortBy`/`sortOrder`, and the query itself as parsed from URL parameters or a
//! `POST /.search` body.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::Value;

use crate::error::ScimError;
use crate::filter::{AttrPath, Filter};
use crate::matching;
use crate::projection::Projection;
use crate::resource::attribute_value;
use crate::schema::{Attribute, AttributeType, Resolved, ResourceType};
use crate::value::order;

/// The schema URI of a `ListResponse`.
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// The schema URI of a `POST /.search` body.
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// Page size when the client sends no `count`.
pub const DEFAULT_COUNT: usize = 100;
/// The largest page Rollcall returns; a larger `count` is clamped to it (RFC 7644 §3.4.2.4).
/// `/ServiceProviderConfig` advertises it as `filter.maxResults`.
pub const MAX_COUNT: usize = 1000;

/// A page of results: `startIndex` (1-based) and `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based index of the first result.
    pub start_index: usize,
    /// How many results at most.
    pub count: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            start_index: 1,
            count: DEFAULT_COUNT,
        }
    }
}

impl Page {
    /// A page from the client's parameters: a `startIndex` below 1 is 1, a negative `count`
    /// is 0 (RFC 7644 §3.4.2.4), a `count` above [`MAX_COUNT`] is [`MAX_COUNT`].
    pub fn new(start_index: Option<i64>, count: Option<i64>) -> Self {
        let start_index =
            start_index.map_or(1, |i| usize::try_from(i.max(1)).unwrap_or(usize::MAX));
        let count = count.map_or(DEFAULT_COUNT, |c| {
            usize::try_from(c.max(0))
                .unwrap_or(MAX_COUNT)
                .min(MAX_COUNT)
        });
        Self { start_index, count }
    }

    /// The 0-based offset of the first result.
    pub fn offset(&self) -> usize {
        self.start_index - 1
    }

    /// This page of `items`.
    pub fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = self.offset().min(items.len());
        let end = start.saturating_add(self.count).min(items.len());
        &items[start..end]
    }
}

/// A `ListResponse` (RFC 7644 §3.4.2). `itemsPerPage` is the number of resources returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListResponse {
    schemas: [&'static str; 1],
    /// How many resources matched in all.
    #[serde(rename = "totalResults")]
    pub total_results: usize,
    /// The resources of this page.
    #[serde(rename = "Resources")]
    pub resources: Vec<Value>,
    /// The 1-based index of the first resource returned.
    #[serde(rename = "startIndex")]
    pub start_index: usize,
    /// How many resources this page holds.
    #[serde(rename = "itemsPerPage")]
    pub items_per_page: usize,
}

impl ListResponse {
    /// A page of `resources` out of `total_results`.
    pub fn new(total_results: usize, start_index: usize, resources: Vec<Value>) -> Self {
        Self {
            schemas: [LIST_RESPONSE_SCHEMA],
            total_results,
            items_per_page: resources.len(),
            start_index,
            resources,
        }
    }

    /// The response as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `sortOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// `ascending` (the default)
    #[default]
    Ascending,
    /// `descending`
    Descending,
}

/// `sortBy` with `sortOrder`, resolved against a resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    resolved: Resolved,
    /// The order.
    pub order: SortOrder,
}

impl Sort {
    /// Resolves `sortBy`. A complex attribute sorts by its `value` (for a multi-valued one,
    /// the primary value's, else the first's: RFC 7644 §3.4.2.3). Unknown attributes and
    /// orders other than `ascending`/`descending` are `400 invalidValue`.
    pub fn parse(
        rt: &ResourceType,
        sort_by: &str,
        sort_order: Option<&str>,
    ) -> Result<Self, ScimError> {
        let path = AttrPath::parse(sort_by.trim())
            .map_err(|error| ScimError::invalid_value(format!("sortBy {sort_by:?}: {error}")))?;
        let mut resolved = rt
            .resolve(path.urn.as_deref(), &path.name, path.sub_attr.as_deref())
            .ok_or_else(|| {
                ScimError::invalid_value(format!(
                    "sortBy {sort_by:?} is not an attribute of {}",
                    rt.name
                ))
            })?;
        if resolved.sub_attribute.is_none() && resolved.attribute.kind == AttributeType::Complex {
            resolved.sub_attribute =
                Some(resolved.attribute.sub_attribute("value").ok_or_else(|| {
                    ScimError::invalid_value(format!(
                        "sortBy {sort_by:?} is complex; name a sub-attribute"
                    ))
                })?);
        }
        let order = match sort_order.map(str::trim) {
            None | Some("") => SortOrder::Ascending,
            Some(text) if text.eq_ignore_ascii_case("ascending") => SortOrder::Ascending,
            Some(text) if text.eq_ignore_ascii_case("descending") => SortOrder::Descending,
            Some(text) => {
                return Err(ScimError::invalid_value(format!(
                    "sortOrder {text:?} is not ascending or descending"
                )))
            }
        };
        Ok(Self { resolved, order })
    }

    /// The value a resource sorts by.
    pub fn key<'v>(&self, resource: &'v Value) -> Option<&'v Value> {
        let value = attribute_value(resource, &self.resolved)?;
        let Some(sub) = self.resolved.sub_attribute else {
            return Some(value);
        };
        match value {
            Value::Array(items) => items
                .iter()
                .find(|item| item.get("primary") == Some(&Value::Bool(true)))
                .or_else(|| items.first())?
                .get(sub.name),
            other => other.get(sub.name),
        }
    }

    fn compared(&self) -> &'static Attribute {
        self.resolved.target()
    }

    /// Sorts resources; those without a value come last in either order.
    pub fn sort(&self, resources: &mut [Value]) {
        let attribute = self.compared();
        resources.sort_by(|a, b| match (self.key(a), self.key(b)) {
            (Some(a), Some(b)) => {
                let ordering = order(attribute, a, b).unwrap_or(Ordering::Equal);
                match self.order {
                    SortOrder::Ascending => ordering,
                    SortOrder::Descending => ordering.reverse(),
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        });
    }
}

/// A parsed query: filter, sort, page and projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// The filter, checked against the resource type.
    pub filter: Option<Filter>,
    /// The sort, if any.
    pub sort: Option<Sort>,
    /// The page.
    pub page: Page,
    /// Which attributes to return.
    pub projection: Projection,
}

/// A query's raw parameters, as they arrive in a URL or a `POST /.search` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// `filter`
    pub filter: Option<String>,
    /// `sortBy`
    pub sort_by: Option<String>,
    /// `sortOrder`
    pub sort_order: Option<String>,
    /// `startIndex`
    pub start_index: Option<i64>,
    /// `count`
    pub count: Option<i64>,
    /// `attributes`, comma-separated
    pub attributes: Option<String>,
    /// `excludedAttributes`, comma-separated
    pub excluded_attributes: Option<String>,
}

impl QueryParams {
    /// The parameters of a `POST /.search` body (RFC 7644 §3.4.3). Keys are read without
    /// case; `attributes` may be a list or a comma-separated string.
    pub fn from_search_body(body: &Value) -> Result<Self, ScimError> {
        let Value::Object(map) = body else {
            return Err(ScimError::invalid_syntax(
                "a search body must be a JSON object",
            ));
        };
        let get = |key: &str| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let text = |key: &str| -> Result<Option<String>, ScimError> {
            match get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(Value::Array(items)) if key.ends_with("ttributes") => Ok(Some(
                    items
                        .iter()
                        .map(|item| item.as_str().map(str::to_owned).ok_or(()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|()| {
                            ScimError::invalid_syntax(format!("{key} must list strings"))
                        })?
                        .join(","),
                )),
                Some(_) => Err(ScimError::invalid_syntax(format!(
                    "{key} has the wrong type"
                ))),
            }
        };
        let number = |key: &str| -> Result<Option<i64>, ScimError> {
            match get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_i64()),
                Some(_) => Err(ScimError::invalid_syntax(format!(
                    "{key} must be an integer"
                ))),
            }
        };
        if let Some(schemas) = get("schemas") {
            let ok = schemas.as_array().is_some_and(|s| {
                s.iter().any(|uri| {
                    uri.as_str()
                        .is_some_and(|u| u.eq_ignore_ascii_case(SEARCH_REQUEST_SCHEMA))
                })
            });
            if !ok {
                return Err(ScimError::invalid_syntax(format!(
                    "schemas must be [\"{SEARCH_REQUEST_SCHEMA}\"]"
                )));
            }
        }
        Ok(Self {
            filter: text("filter")?,
            sort_by: text("sortBy")?,
            sort_order: text("sortOrder")?,
            start_index: number("startIndex")?,
            count: number("count")?,
            attributes: text("attributes")?,
            excluded_attributes: text("excludedAttributes")?,
        })
    }
}

impl Query {
    /// Parses and checks every parameter against `rt`.
    pub fn parse(rt: &ResourceType, params: &QueryParams) -> Result<Self, ScimError> {
        let filter = match params.filter.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                let filter = Filter::parse(text).map_err(|error| error.into_filter_error(text))?;
                matching::check(rt, &filter)?;
                Some(filter)
            }
        };
        let sort = match params.sort_by.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(sort_by) => Some(Sort::parse(rt, sort_by, params.sort_order.as_deref())?),
        };
        Ok(Self {
            filter,
            sort,
            page: Page::new(params.start_index, params.count),
            projection: Projection::parse(
                rt,
                params.attributes.as_deref(),
                params.excluded_attributes.as_deref(),
            )?,
        })
    }

    /// Runs the query over resources held in memory: filter, sort, page, project.
    pub fn run(
        &self,
        rt: &ResourceType,
        resources: impl IntoIterator<Item = Value>,
    ) -> ListResponse {
        let mut matched: Vec<Value> = resources
            .into_iter()
            .filter(|resource| {
                self.filter
                    .as_ref()
                    .is_none_or(|filter| matching::matches(rt, resource, filter))
            })
            .collect();
        if let Some(sort) = &self.sort {
            sort.sort(&mut matched);
        }
        let page = self
            .page
            .slice(&matched)
            .iter()
            .map(|r| self.projection.apply(rt, r))
            .collect();
        ListResponse::new(matched.len(), self.page.start_index, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::USER_RESOURCE;
    use serde_json::json;

    fn users() -> Vec<Value> {
        ["carol", "Alice", "bob", "dave", "Eve"]
            .iter()
            .enumerate()
            .map(|(i, name)| json!({"id": i.to_string(), "userName": name, "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}))
            .collect()
    }

    #[test]
    fn pages_clamp_and_count_from_one() {
        assert_eq!(
            Page::new(Some(0), Some(-3)),
            Page {
                start_index: 1,
                count: 0
            }
        );
        assert_eq!(Page::new(None, Some(1_000_000)).count, MAX_COUNT);
        assert_eq!(
            Page::new(Some(4), Some(5)).slice(&[1, 2, 3, 4, 5, 6]),
            &[4, 5, 6]
        );
        assert!(Page::new(Some(99), None).slice(&[1, 2]).is_empty());
    }

    #[test]
    fn sorting_ignores_case_for_user_name_and_pages_echo_start_index() {
        let params = QueryParams {
            sort_by: Some("userName".into()),
            sort_order: Some("descending".into()),
            start_index: Some(2),
            count: Some(2),
            ..Default::default()
        };
        let response = Query::parse(&USER_RESOURCE, &params)
            .unwrap()
            .run(&USER_RESOURCE, users());
        let names: Vec<_> = response
            .resources
            .iter()
            .map(|r| r["userName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["dave", "carol"]);
        assert_eq!(
            (
                response.total_results,
                response.start_index,
                response.items_per_page
            ),
            (5, 2, 2)
        );
    }

    #[test]
    fn an_empty_result_is_an_empty_list_response() {
        let params = QueryParams {
            filter: Some(r#"userName eq "7f9d3a5e-1c52-4b1e-9a0e-2f3b6c8d9e10""#.into()),
            ..Default::default()
        };
        let response = Query::parse(&USER_RESOURCE, &params)
            .unwrap()
            .run(&USER_RESOURCE, users());
        assert_eq!(
            response.to_json(),
            json!({"schemas": [LIST_RESPONSE_SCHEMA], "totalResults": 0, "Resources": [], "startIndex": 1, "itemsPerPage": 0})
        );
    }

    #[test]
    fn search_bodies_read_like_url_parameters() {
        let params = QueryParams::from_search_body(&json!({
            "schemas": [SEARCH_REQUEST_SCHEMA], "attributes": ["userName", "name"], "filter": "userName sw \"a\"", "startIndex": 1, "count": 10
        }))
        .unwrap();
        assert_eq!(params.attributes.as_deref(), Some("userName,name"));
        assert!(Query::parse(&USER_RESOURCE, &params).is_ok());
        assert!(QueryParams::from_search_body(&json!({"count": "ten"})).is_err());
        assert!(Query::parse(
            &USER_RESOURCE,
            &QueryParams {
                sort_order: Some("up".into()),
                sort_by: Some("userName".into()),
                ..Default::default()
            }
        )
        .is_err());
    }
}
