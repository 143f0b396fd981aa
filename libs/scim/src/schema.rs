//! The SCIM schemas Rollcall stores, defined once as data (RFC 7643 §4 and §8.7): the core User
//! and Group schemas, the EnterpriseUser extension and the common attributes. Everything else in
//! this crate (validation, attribute lookup, filters, PATCH, projection, discovery) reads them.

/// Schema URI of the core User resource (RFC 7643 §4.1).
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Schema URI of the core Group resource (RFC 7643 §4.2).
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Schema URI of the EnterpriseUser extension (RFC 7643 §4.3).
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// The non-standard group schema URI Entra ID sends on `POST /Groups` (ENTRA.md §4.9).
pub const MICROSOFT_GROUP_SCHEMA: &str =
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
/// A mistyped EnterpriseUser URI seen in an older Entra example (ENTRA.md §4.2).
pub const MISTYPED_ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0User";

/// An attribute's data type (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    /// A Unicode string.
    String,
    /// `true` or `false`.
    Boolean,
    /// A real number.
    Decimal,
    /// A whole number.
    Integer,
    /// An xsd:dateTime string (RFC 3339 with a time zone).
    DateTime,
    /// Base64-encoded bytes.
    Binary,
    /// A URI of a resource.
    Reference,
    /// A set of sub-attributes.
    Complex,
}

impl AttributeType {
    /// The name used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributeType::String => "string",
            AttributeType::Boolean => "boolean",
            AttributeType::Decimal => "decimal",
            AttributeType::Integer => "integer",
            AttributeType::DateTime => "dateTime",
            AttributeType::Binary => "binary",
            AttributeType::Reference => "reference",
            AttributeType::Complex => "complex",
        }
    }
}

/// Whether and how an attribute may be changed (RFC 7643 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// Only the service provider sets it.
    ReadOnly,
    /// Clients may set and change it.
    ReadWrite,
    /// Clients may set it once; it cannot change after that.
    Immutable,
    /// Clients may set it; it is never returned.
    WriteOnly,
}

impl Mutability {
    /// The name used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Mutability::ReadOnly => "readOnly",
            Mutability::ReadWrite => "readWrite",
            Mutability::Immutable => "immutable",
            Mutability::WriteOnly => "writeOnly",
        }
    }
}

/// When an attribute is returned (RFC 7643 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Always, whatever `attributes`/`excludedAttributes` say.
    Always,
    /// Never.
    Never,
    /// Unless excluded, or unless `attributes` names others only.
    Default,
    /// Only when named in `attributes`.
    Request,
}

impl Returned {
    /// The name used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Returned::Always => "always",
            Returned::Never => "never",
            Returned::Default => "default",
            Returned::Request => "request",
        }
    }
}

/// How unique an attribute's value is (RFC 7643 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    /// No uniqueness.
    None,
    /// Unique within the service provider (for Rollcall: within a tenant).
    Server,
    /// Globally unique.
    Global,
}

impl Uniqueness {
    /// The name used in schema documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Uniqueness::None => "none",
            Uniqueness::Server => "server",
            Uniqueness::Global => "global",
        }
    }
}

/// One attribute definition (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attribute {
    /// The attribute's name, in its canonical case.
    pub name: &'static str,
    /// Its data type.
    pub kind: AttributeType,
    /// Whether it holds a list of values.
    pub multi_valued: bool,
    /// Whether a resource must carry it.
    pub required: bool,
    /// Whether string comparison respects case.
    pub case_exact: bool,
    /// Who may change it.
    pub mutability: Mutability,
    /// When it is returned.
    pub returned: Returned,
    /// How unique its values are.
    pub uniqueness: Uniqueness,
    /// Suggested values (`type`: "work", "home" …); not enforced (RFC 7643 §2.3.1 "MAY").
    pub canonical_values: &'static [&'static str],
    /// For references: which resource types, or "external" / "uri".
    pub reference_types: &'static [&'static str],
    /// For complex attributes: the sub-attributes.
    pub sub_attributes: &'static [Attribute],
    /// A human-readable description.
    pub description: &'static str,
}

const fn attribute(name: &'static str, kind: AttributeType) -> Attribute {
    Attribute {
        name,
        kind,
        multi_valued: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        canonical_values: &[],
        reference_types: &[],
        sub_attributes: &[],
        description: "",
    }
}

const fn string(name: &'static str) -> Attribute {
    attribute(name, AttributeType::String)
}

const fn boolean(name: &'static str) -> Attribute {
    attribute(name, AttributeType::Boolean)
}

const fn date_time(name: &'static str) -> Attribute {
    attribute(name, AttributeType::DateTime)
}

const fn reference(name: &'static str, types: &'static [&'static str]) -> Attribute {
    let mut attribute = attribute(name, AttributeType::Reference);
    attribute.reference_types = types;
    attribute
}

const fn complex(name: &'static str, subs: &'static [Attribute]) -> Attribute {
    let mut attribute = attribute(name, AttributeType::Complex);
    attribute.sub_attributes = subs;
    attribute
}

impl Attribute {
    const fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    const fn mutability(mut self, mutability: Mutability) -> Self {
        self.mutability = mutability;
        self
    }
    const fn returned(mut self, returned: Returned) -> Self {
        self.returned = returned;
        self
    }
    const fn unique(mut self) -> Self {
        self.uniqueness = Uniqueness::Server;
        self
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Self {
        self.canonical_values = values;
        self
    }
    const fn describe(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    /// The sub-attribute with this name, compared without case (RFC 7643 §2.1).
    pub fn sub_attribute(&self, name: &str) -> Option<&'static Attribute> {
        self.sub_attributes
            .iter()
            .find(|sub| sub.name.eq_ignore_ascii_case(name))
    }

    /// Whether a client may write this attribute.
    pub fn is_writable(&self) -> bool {
        self.mutability != Mutability::ReadOnly
    }
}

/// A schema: a named set of attributes (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schema {
    /// The schema URI.
    pub id: &'static str,
    /// Its short name.
    pub name: &'static str,
    /// A description.
    pub description: &'static str,
    /// Its top-level attributes.
    pub attributes: &'static [Attribute],
}

impl Schema {
    /// The top-level attribute with this name, compared without case.
    pub fn attribute(&self, name: &str) -> Option<&'static Attribute> {
        self.attributes
            .iter()
            .find(|attribute| attribute.name.eq_ignore_ascii_case(name))
    }
}

// --- Common attributes (RFC 7643 §3.1), part of every resource but of no schema. ---

const META_SUBS: &[Attribute] = &[
    string("resourceType")
        .case_exact()
        .mutability(Mutability::ReadOnly),
    date_time("created").mutability(Mutability::ReadOnly),
    date_time("lastModified").mutability(Mutability::ReadOnly),
    reference("location", &["uri"])
        .case_exact()
        .mutability(Mutability::ReadOnly),
    string("version")
        .case_exact()
        .mutability(Mutability::ReadOnly),
];

/// The common attributes `schemas`, `id`, `externalId` and `meta`.
///
/// `externalId` is compared without case: Entra matches on it, and a lookup that misses
/// makes Entra create a duplicate (ENTRA.md §6, §7); Microsoft's reference server does the same.
pub static COMMON_ATTRIBUTES: &[Attribute] = &[
    reference("schemas", &["uri"])
        .multi()
        .required()
        .mutability(Mutability::ReadOnly)
        .returned(Returned::Always),
    string("id")
        .case_exact()
        .mutability(Mutability::ReadOnly)
        .returned(Returned::Always)
        .unique()
        .describe("Unique identifier for the resource, assigned by Rollcall."),
    string("externalId").describe("Identifier of the resource in the provisioning client."),
    complex("meta", META_SUBS)
        .mutability(Mutability::ReadOnly)
        .describe("Resource metadata."),
];

// --- Shared multi-valued shapes ---

const TYPE_PRIMARY_SUBS_WORK_HOME_OTHER: &[Attribute] = &[
    string("value"),
    string("display"),
    string("type").canonical(&["work", "home", "other"]),
    boolean("primary"),
];

const EMAIL_SUBS: &[Attribute] = TYPE_PRIMARY_SUBS_WORK_HOME_OTHER;

const PHONE_SUBS: &[Attribute] = &[
    string("value"),
    string("display"),
    string("type").canonical(&["work", "home", "mobile", "fax", "pager", "other"]),
    boolean("primary"),
];

const IM_SUBS: &[Attribute] = &[
    string("value"),
    string("display"),
    string("type").canonical(&["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"]),
    boolean("primary"),
];

const PHOTO_SUBS: &[Attribute] = &[
    reference("value", &["external"]).case_exact(),
    string("display"),
    string("type").canonical(&["photo", "thumbnail"]),
    boolean("primary"),
];

const ADDRESS_SUBS: &[Attribute] = &[
    string("formatted"),
    string("streetAddress"),
    string("locality"),
    string("region"),
    string("postalCode"),
    string("country"),
    string("type").canonical(&["work", "home", "other"]),
    boolean("primary"),
];

const USER_GROUP_SUBS: &[Attribute] = &[
    string("value").mutability(Mutability::ReadOnly),
    reference("$ref", &["User", "Group"]).mutability(Mutability::ReadOnly),
    string("display").mutability(Mutability::ReadOnly),
    string("type")
        .canonical(&["direct", "indirect"])
        .mutability(Mutability::ReadOnly),
];

const VALUE_DISPLAY_TYPE_PRIMARY: &[Attribute] = &[
    string("value"),
    string("display"),
    string("type"),
    boolean("primary"),
];

const CERTIFICATE_SUBS: &[Attribute] = &[
    // RFC 7643 errata 6000: binary values are case-exact.
    attribute("value", AttributeType::Binary).case_exact(),
    string("display"),
    string("type"),
    boolean("primary"),
];

const NAME_SUBS: &[Attribute] = &[
    string("formatted"),
    string("familyName"),
    string("givenName"),
    string("middleName"),
    string("honorificPrefix"),
    string("honorificSuffix"),
];

/// The core User schema, every attribute of RFC 7643 §4.1.
///
/// `userName` is `caseExact: false` and unique per tenant (compared without case).
pub static USER: Schema = Schema {
    id: USER_SCHEMA,
    name: "User",
    description: "User Account",
    attributes: &[
        string("userName")
            .required()
            .unique()
            .describe("Unique identifier for the User, typically used to sign in."),
        complex("name", NAME_SUBS).describe("The components of the user's real name."),
        string("displayName").describe("The name of the User, suitable for display."),
        string("nickName").describe("The casual way to address the user."),
        reference("profileUrl", &["external"]).describe("A URI to the user's online profile."),
        string("title").describe("The user's title, such as \"Vice President\"."),
        string("userType").describe("The relationship between organization and user."),
        string("preferredLanguage").describe("The user's preferred written or spoken language."),
        string("locale").describe("The user's default location for localization."),
        string("timezone").describe("The user's time zone, in IANA format."),
        boolean("active").describe("The user's administrative status."),
        string("password")
            .mutability(Mutability::WriteOnly)
            .returned(Returned::Never)
            .describe("The user's cleartext password; write-only, never returned."),
        complex("emails", EMAIL_SUBS)
            .multi()
            .describe("Email addresses for the user."),
        complex("phoneNumbers", PHONE_SUBS)
            .multi()
            .describe("Phone numbers for the User."),
        complex("ims", IM_SUBS)
            .multi()
            .describe("Instant messaging addresses for the User."),
        complex("photos", PHOTO_SUBS)
            .multi()
            .describe("URLs of photos of the User."),
        complex("addresses", ADDRESS_SUBS)
            .multi()
            .describe("A physical mailing address."),
        complex("groups", USER_GROUP_SUBS)
            .multi()
            .mutability(Mutability::ReadOnly)
            .describe("The groups the user belongs to, derived from group membership."),
        complex("entitlements", VALUE_DISPLAY_TYPE_PRIMARY)
            .multi()
            .describe("A list of entitlements for the User."),
        complex("roles", VALUE_DISPLAY_TYPE_PRIMARY)
            .multi()
            .describe("A list of roles for the User."),
        complex("x509Certificates", CERTIFICATE_SUBS)
            .multi()
            .describe("A list of certificates issued to the User."),
    ],
};

const MANAGER_SUBS: &[Attribute] = &[
    string("value").describe("The id of the SCIM resource representing the manager."),
    reference("$ref", &["User"]).describe("The URI of the manager's SCIM resource."),
    string("displayName")
        .mutability(Mutability::ReadOnly)
        .describe("The manager's displayName."),
];

/// The EnterpriseUser extension (RFC 7643 §4.3).
pub static ENTERPRISE_USER: Schema = Schema {
    id: ENTERPRISE_USER_SCHEMA,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: &[
        string("employeeNumber").describe("Numeric or alphanumeric identifier of the user."),
        string("costCenter").describe("Identifies the name of a cost center."),
        string("organization").describe("Identifies the name of an organization."),
        string("division").describe("Identifies the name of a division."),
        string("department").describe("Identifies the name of a department."),
        complex("manager", MANAGER_SUBS).describe("The User's manager."),
    ],
};

const MEMBER_SUBS: &[Attribute] = &[
    string("value")
        .mutability(Mutability::Immutable)
        .describe("Identifier of the member."),
    reference("$ref", &["User", "Group"])
        .mutability(Mutability::Immutable)
        .describe("The URI of the member's SCIM resource."),
    string("display")
        .mutability(Mutability::Immutable)
        .describe("A name for the member."),
    string("type")
        .canonical(&["User", "Group"])
        .mutability(Mutability::Immutable)
        .describe("The type of the member."),
];

/// The core Group schema (RFC 7643 §4.2).
///
/// `displayName` is required and unique per tenant: Entra looks groups up by it (ENTRA.md §4.9).
pub static GROUP: Schema = Schema {
    id: GROUP_SCHEMA,
    name: "Group",
    description: "Group",
    attributes: &[
        string("displayName")
            .required()
            .unique()
            .describe("A human-readable name for the Group."),
        complex("members", MEMBER_SUBS)
            .multi()
            .describe("A list of members of the Group."),
    ],
};

/// A resource type: an endpoint, its core schema and its extensions (RFC 7643 §6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceType {
    /// The resource type's name (`User`, `Group`).
    pub name: &'static str,
    /// The endpoint, relative to the SCIM base URL.
    pub endpoint: &'static str,
    /// A description.
    pub description: &'static str,
    /// The core schema.
    pub schema: &'static Schema,
    /// Extension schemas (all optional for Rollcall).
    pub extensions: &'static [&'static Schema],
    /// Schema URIs accepted in a request's `schemas` and otherwise ignored.
    pub tolerated_schemas: &'static [&'static str],
}

/// The User resource type.
pub static USER_RESOURCE: ResourceType = ResourceType {
    name: "User",
    endpoint: "/Users",
    description: "User Account",
    schema: &USER,
    extensions: &[&ENTERPRISE_USER],
    tolerated_schemas: &[MISTYPED_ENTERPRISE_USER_SCHEMA],
};

/// The Group resource type.
pub static GROUP_RESOURCE: ResourceType = ResourceType {
    name: "Group",
    endpoint: "/Groups",
    description: "Group",
    schema: &GROUP,
    extensions: &[],
    tolerated_schemas: &[MICROSOFT_GROUP_SCHEMA],
};

/// Every resource type Rollcall serves.
pub static RESOURCE_TYPES: &[&ResourceType] = &[&USER_RESOURCE, &GROUP_RESOURCE];

/// Where a resolved attribute lives in a resource's JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// The schema that defines it (`None` for a common attribute).
    pub schema: Option<&'static Schema>,
    /// Whether it lives in an extension object (`resource[schema.id]`).
    pub in_extension: bool,
    /// The attribute.
    pub attribute: &'static Attribute,
    /// The sub-attribute, when the path names one.
    pub sub_attribute: Option<&'static Attribute>,
}

impl Resolved {
    /// The canonical, fully qualified text of the path (`name.givenName`,
    /// `urn:…:enterprise:2.0:User:manager.value`).
    pub fn canonical_path(&self) -> String {
        let mut path = String::new();
        if let (true, Some(schema)) = (self.in_extension, self.schema) {
            path.push_str(schema.id);
            path.push(':');
        }
        path.push_str(self.attribute.name);
        if let Some(sub) = self.sub_attribute {
            path.push('.');
            path.push_str(sub.name);
        }
        path
    }

    /// The attribute the path ends at: the sub-attribute if any, else the attribute.
    pub fn target(&self) -> &'static Attribute {
        self.sub_attribute.unwrap_or(self.attribute)
    }
}

impl ResourceType {
    /// All schemas of this type, core first.
    pub fn schemas(&self) -> impl Iterator<Item = &'static Schema> + '_ {
        std::iter::once(self.schema).chain(self.extensions.iter().copied())
    }

    /// The extension schema with this URI, compared without case.
    pub fn extension(&self, urn: &str) -> Option<&'static Schema> {
        self.extensions
            .iter()
            .copied()
            .find(|schema| schema.id.eq_ignore_ascii_case(urn))
    }

    /// The schema (core or extension) with this URI, compared without case.
    pub fn schema_by_urn(&self, urn: &str) -> Option<&'static Schema> {
        self.schemas()
            .find(|schema| schema.id.eq_ignore_ascii_case(urn))
    }

    /// Whether a request may name this URI in `schemas`.
    pub fn accepts_schema(&self, urn: &str) -> bool {
        self.schema_by_urn(urn).is_some()
            || self
                .tolerated_schemas
                .iter()
                .any(|tolerated| tolerated.eq_ignore_ascii_case(urn))
    }

    /// Resolves an attribute path against this type's schemas, without case.
    ///
    /// With a URN, only that schema is searched (the core URN also finds the common
    /// attributes). Without one, the common attributes, the core schema and then each
    /// extension are searched, in that order (RFC 7644 §3.10).
    pub fn resolve(&self, urn: Option<&str>, name: &str, sub: Option<&str>) -> Option<Resolved> {
        let (schema, in_extension, attribute) = match urn {
            Some(urn) => {
                let schema = self.schema_by_urn(urn)?;
                let in_extension = !std::ptr::eq(schema, self.schema);
                let attribute = match schema.attribute(name) {
                    Some(attribute) => attribute,
                    None if !in_extension => common_attribute(name)?,
                    None => return None,
                };
                (Some(schema), in_extension, attribute)
            }
            None => {
                if let Some(attribute) = common_attribute(name) {
                    (None, false, attribute)
                } else if let Some(attribute) = self.schema.attribute(name) {
                    (Some(self.schema), false, attribute)
                } else {
                    let (schema, attribute) = self
                        .extensions
                        .iter()
                        .find_map(|schema| Some((*schema, schema.attribute(name)?)))?;
                    (Some(schema), true, attribute)
                }
            }
        };
        let sub_attribute = match sub {
            Some(sub) => Some(attribute.sub_attribute(sub)?),
            None => None,
        };
        Some(Resolved {
            schema,
            in_extension,
            attribute,
            sub_attribute,
        })
    }
}

/// The common attribute with this name, compared without case.
pub fn common_attribute(name: &str) -> Option<&'static Attribute> {
    COMMON_ATTRIBUTES
        .iter()
        .find(|attribute| attribute.name.eq_ignore_ascii_case(name))
}

/// The resource type with this name (`User`, `Group`), compared without case.
pub fn resource_type(name: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES
        .iter()
        .copied()
        .find(|rt| rt.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names_resolve_without_case() {
        let resolved = USER_RESOURCE.resolve(None, "USERNAME", None).unwrap();
        assert_eq!(resolved.attribute.name, "userName");
        let resolved = USER_RESOURCE
            .resolve(None, "emails", Some("Value"))
            .unwrap();
        assert_eq!(resolved.canonical_path(), "emails.value");
    }

    #[test]
    fn unqualified_extension_attributes_resolve_to_the_extension() {
        let resolved = USER_RESOURCE.resolve(None, "manager", None).unwrap();
        assert!(resolved.in_extension);
        assert_eq!(
            resolved.canonical_path(),
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
        );
    }

    #[test]
    fn the_core_urn_finds_common_attributes_and_an_extension_urn_does_not() {
        assert!(USER_RESOURCE
            .resolve(Some(USER_SCHEMA), "id", None)
            .is_some());
        assert!(USER_RESOURCE
            .resolve(Some(ENTERPRISE_USER_SCHEMA), "id", None)
            .is_none());
        assert!(USER_RESOURCE
            .resolve(Some(ENTERPRISE_USER_SCHEMA), "userName", None)
            .is_none());
    }

    #[test]
    fn the_user_schema_has_every_attribute_of_rfc_7643_section_4_1() {
        let names: Vec<_> = USER.attributes.iter().map(|a| a.name).collect();
        for expected in [
            "userName",
            "name",
            "displayName",
            "nickName",
            "profileUrl",
            "title",
            "userType",
            "preferredLanguage",
            "locale",
            "timezone",
            "active",
            "password",
            "emails",
            "phoneNumbers",
            "ims",
            "photos",
            "addresses",
            "groups",
            "entitlements",
            "roles",
            "x509Certificates",
        ] {
            assert!(names.contains(&expected), "missing {expected}");
        }
    }

    #[test]
    fn microsofts_group_schema_uri_is_accepted_but_unknown_ones_are_not() {
        assert!(GROUP_RESOURCE.accepts_schema(MICROSOFT_GROUP_SCHEMA));
        assert!(GROUP_RESOURCE.accepts_schema("URN:ietf:params:scim:schemas:core:2.0:Group"));
        assert!(!GROUP_RESOURCE.accepts_schema(USER_SCHEMA));
    }
}
