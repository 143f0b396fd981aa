//! SCIM filters and attribute paths (RFC 7644 §3.4.2.2, §3.5.2, §3.10): the public AST, its
//! parser and its printer. Printing an AST and parsing the text gives the same AST back, so
//! the store can compile the filters it indexes into SQL and log them in a canonical form.
//!
//! Grammar accepted, beyond the RFC's ABNF:
//! - attribute names, operators, `and`/`or`/`not` and the literals `true`/`false`/`null`
//!   in any case (RFC 7643 §2.1; Entra writes `.Value`);
//! - any amount of white space between tokens;
//! - a bare, unquoted value is read as a string (`externalId eq jyoung`, as Microsoft's docs
//!   show; ENTRA.md §6), unless it is a JSON number or a literal;
//! - `emails[type eq "work"].value eq "x"`, the form Entra uses when a filtered path is the
//!   matching attribute (ENTRA.md §6), which means the same as
//!   `emails[type eq "work" and value eq "x"]` and is parsed into that.
//!
//! Hostile input: a filter longer than [`MAX_FILTER_LENGTH`], holding more than
//! [`MAX_FILTER_TERMS`] attribute expressions or nesting deeper than [`MAX_FILTER_DEPTH`] is
//! refused. A chain of `and`s or `or`s is one n-ary node, so every walk over the AST (matching,
//! printing, compiling to SQL, dropping it) recurses only as deep as the parentheses, `not (…)`
//! and `[…]` nest, never as long as the chain is.

use std::fmt;

use serde_json::Number;

use crate::error::ScimError;
use crate::limits::{MAX_FILTER_DEPTH, MAX_FILTER_LENGTH, MAX_FILTER_TERMS};

/// An attribute path: `[urn ":"] name ["." subAttribute]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrPath {
    /// The schema URI the attribute is qualified with, if any.
    pub urn: Option<String>,
    /// The attribute name, as written.
    pub name: String,
    /// The sub-attribute name, as written.
    pub sub_attr: Option<String>,
}

impl AttrPath {
    /// A path of one unqualified attribute name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            urn: None,
            name: name.into(),
            sub_attr: None,
        }
    }

    /// The same path with a sub-attribute.
    pub fn with_sub(mut self, sub: impl Into<String>) -> Self {
        self.sub_attr = Some(sub.into());
        self
    }

    /// Parses a lone attribute path (as in `attributes=`, `sortBy=`).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let mut parser = Parser::new(input, "attribute path")?;
        parser.skip_ws();
        let path = parser.attr_path()?;
        parser.skip_ws();
        parser.expect_end()?;
        Ok(path)
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub_attr {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// A comparison operator (RFC 7644 §3.4.2.2, Table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// contains
    Co,
    /// starts with
    Sw,
    /// ends with
    Ew,
    /// greater than
    Gt,
    /// greater than or equal to
    Ge,
    /// less than
    Lt,
    /// less than or equal to
    Le,
}

impl CompareOp {
    /// The operator as written in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        [
            CompareOp::Eq,
            CompareOp::Ne,
            CompareOp::Co,
            CompareOp::Sw,
            CompareOp::Ew,
            CompareOp::Gt,
            CompareOp::Ge,
            CompareOp::Lt,
            CompareOp::Le,
        ]
        .into_iter()
        .find(|op| op.as_str().eq_ignore_ascii_case(word))
    }
}

/// A comparison value: `false / null / true / number / string`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompValue {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A JSON number.
    Number(Number),
    /// A string (quoted, or a bare token).
    String(String),
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::Null => f.write_str("null"),
            CompValue::Bool(value) => write!(f, "{value}"),
            CompValue::Number(number) => write!(f, "{number}"),
            CompValue::String(text) => {
                f.write_str(&serde_json::to_string(text).map_err(|_| fmt::Error)?)
            }
        }
    }
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `attrPath pr`
    Present(AttrPath),
    /// `attrPath op value`
    Compare(AttrPath, CompareOp, CompValue),
    /// `attrPath "[" valFilter "]"`: some value of a multi-valued complex attribute matches.
    /// The inner filter's paths name sub-attributes.
    ValuePath(AttrPath, Box<Filter>),
    /// `not (filter)`
    Not(Box<Filter>),
    /// `filter and filter [and filter …]`: a whole chain, two operands or more (the parser
    /// never builds fewer; an operand that is itself an `and` was written in parentheses).
    And(Vec<Filter>),
    /// `filter or filter [or filter …]`: a whole chain, two operands or more.
    Or(Vec<Filter>),
}

impl Filter {
    /// Parses a filter, within the limits of [`crate::limits`].
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let mut parser = Parser::new(input, "filter")?;
        parser.skip_ws();
        if parser.at_end() {
            return Err(parser.error("the filter is empty"));
        }
        let filter = parser.or_expr(false)?;
        parser.skip_ws();
        parser.expect_end()?;
        Ok(filter)
    }

    fn precedence(&self) -> u8 {
        match self {
            Filter::Or(..) => 1,
            Filter::And(..) => 2,
            _ => 3,
        }
    }

    /// Writes a chain: operands that bind no tighter than the chain itself are parenthesized,
    /// so that the printed text parses back to the same AST.
    fn fmt_chain(
        f: &mut fmt::Formatter<'_>,
        operands: &[Filter],
        joiner: &str,
        own: u8,
    ) -> fmt::Result {
        for (index, operand) in operands.iter().enumerate() {
            if index > 0 {
                f.write_str(joiner)?;
            }
            if operand.precedence() <= own {
                write!(f, "({operand})")?;
            } else {
                write!(f, "{operand}")?;
            }
        }
        Ok(())
    }

    /// The conjunction of `attr eq value` comparisons this filter is, if it is one
    /// (`type eq "work"`, `type eq "work" and primary eq true`), in the order written.
    pub fn equalities(&self) -> Option<Vec<(&AttrPath, &CompValue)>> {
        let mut all = Vec::new();
        let mut pending = vec![self];
        while let Some(filter) = pending.pop() {
            match filter {
                Filter::Compare(path, CompareOp::Eq, value) => all.push((path, value)),
                Filter::And(operands) => pending.extend(operands.iter().rev()),
                _ => return None,
            }
        }
        Some(all)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::Compare(path, op, value) => write!(f, "{path} {} {value}", op.as_str()),
            Filter::ValuePath(path, inner) => write!(f, "{path}[{inner}]"),
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::And(operands) => Filter::fmt_chain(f, operands, " and ", 2),
            Filter::Or(operands) => Filter::fmt_chain(f, operands, " or ", 1),
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Filter::parse(input)
    }
}

/// A PATCH operation's path (RFC 7644 §3.5.2): `attrPath` or `valuePath [subAttr]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatchPath {
    /// The attribute; its `sub_attr` is the trailing sub-attribute, after the filter if any.
    pub attribute: AttrPath,
    /// The value filter selecting elements of a multi-valued attribute.
    pub filter: Option<Filter>,
}

impl PatchPath {
    /// Parses a PATCH path, within the limits of [`crate::limits`].
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let mut parser = Parser::new(input, "path")?;
        parser.skip_ws();
        let mut attribute = parser.attr_path()?;
        let mut filter = None;
        if parser.peek() == Some('[') {
            if attribute.sub_attr.is_some() {
                return Err(
                    parser.error("a value filter must follow an attribute, not a sub-attribute")
                );
            }
            filter = Some(parser.bracketed()?);
            if parser.peek() == Some('.') {
                parser.bump();
                attribute.sub_attr = Some(parser.attr_name()?);
            }
        }
        parser.skip_ws();
        parser.expect_end()?;
        Ok(Self { attribute, filter })
    }
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.filter {
            None => write!(f, "{}", self.attribute),
            Some(filter) => {
                if let Some(urn) = &self.attribute.urn {
                    write!(f, "{urn}:")?;
                }
                write!(f, "{}[{filter}]", self.attribute.name)?;
                if let Some(sub) = &self.attribute.sub_attr {
                    write!(f, ".{sub}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a filter or path did not parse, and where (a byte offset into the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}")]
pub struct ParseError {
    /// Byte offset of the problem.
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

impl ParseError {
    /// As a `400 invalidFilter` for a `filter` parameter. The detail quotes the start of the
    /// input only.
    pub fn into_filter_error(self, input: &str) -> ScimError {
        ScimError::invalid_filter(format!("invalid filter {}: {self}", excerpt(input)))
    }

    /// As a `400 invalidPath` for a PATCH `path`. The detail quotes the start of the input only.
    pub fn into_path_error(self, input: &str) -> ScimError {
        ScimError::invalid_path(format!("invalid path {}: {self}", excerpt(input)))
    }
}

/// How many characters of a refused filter or path an error quotes.
const EXCERPT_CHARS: usize = 100;

/// The input quoted, cut after [`EXCERPT_CHARS`] characters: an error about a 500 KB filter
/// must not carry it back (or into the logs).
fn excerpt(input: &str) -> String {
    match input.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{input:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &input[..end], input.len()),
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    depth: usize,
    /// The deepest nesting reached so far.
    deepest: usize,
    terms: usize,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '.' | ':')
}

fn is_keyword_end(c: Option<char>) -> bool {
    c.is_none_or(|c| c.is_whitespace() || c == '(')
}

impl<'a> Parser<'a> {
    /// A parser of `input`, unless it is longer than [`MAX_FILTER_LENGTH`] (`what` names it).
    fn new(input: &'a str, what: &str) -> Result<Self, ParseError> {
        if input.len() > MAX_FILTER_LENGTH {
            return Err(ParseError {
                position: MAX_FILTER_LENGTH,
                message: format!(
                    "the {what} is {} bytes long; at most {MAX_FILTER_LENGTH} are accepted",
                    input.len()
                ),
            });
        }
        Ok(Self {
            input,
            pos: 0,
            depth: 0,
            deepest: 0,
            terms: 0,
        })
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            position: self.pos,
            message: message.into(),
        }
    }

    fn expect_end(&self) -> Result<(), ParseError> {
        match self.peek() {
            None => Ok(()),
            Some(c) => Err(self.error(format!("unexpected {c:?}"))),
        }
    }

    fn expect(&mut self, expected: char) -> Result<(), ParseError> {
        match self.peek() {
            Some(c) if c == expected => {
                self.bump();
                Ok(())
            }
            Some(c) => Err(self.error(format!("expected {expected:?}, found {c:?}"))),
            None => Err(self.error(format!("expected {expected:?}, found the end of the input"))),
        }
    }

    /// Consumes `word` (any case) if it stands here as a whole keyword.
    fn keyword(&mut self, word: &str) -> bool {
        let rest = self.rest();
        let matches = rest.len() >= word.len()
            && rest.is_char_boundary(word.len())
            && rest[..word.len()].eq_ignore_ascii_case(word)
            && is_keyword_end(rest[word.len()..].chars().next());
        if matches {
            self.pos += word.len();
        }
        matches
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        self.deepest = self.deepest.max(self.depth);
        if self.depth > MAX_FILTER_DEPTH {
            return Err(self.error(format!(
                "nested deeper than {MAX_FILTER_DEPTH} levels of parentheses and brackets"
            )));
        }
        Ok(())
    }

    /// Counts one attribute expression against [`MAX_FILTER_TERMS`].
    fn term(&mut self) -> Result<(), ParseError> {
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return Err(self.error(format!(
                "more than {MAX_FILTER_TERMS} attribute expressions"
            )));
        }
        Ok(())
    }

    /// `and_expr *("or" and_expr)`, as one n-ary node (a loop, not a recursion).
    fn or_expr(&mut self, inner: bool) -> Result<Filter, ParseError> {
        let mut operands = vec![self.and_expr(inner)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.keyword("or") {
                operands.push(self.and_expr(inner)?);
            } else {
                self.pos = save;
                return Ok(chain(operands, Filter::Or));
            }
        }
    }

    /// `unary *("and" unary)`, as one n-ary node (a loop, not a recursion).
    fn and_expr(&mut self, inner: bool) -> Result<Filter, ParseError> {
        let mut operands = vec![self.unary(inner)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.keyword("and") {
                operands.push(self.unary(inner)?);
            } else {
                self.pos = save;
                return Ok(chain(operands, Filter::And));
            }
        }
    }

    fn unary(&mut self, inner: bool) -> Result<Filter, ParseError> {
        self.skip_ws();
        if self.keyword("not") {
            self.skip_ws();
            if self.peek() != Some('(') {
                return Err(self.error("expected '(' after 'not'"));
            }
            return Ok(Filter::Not(Box::new(self.group(inner)?)));
        }
        match self.peek() {
            Some('(') => self.group(inner),
            None => Err(self.error("expected an expression, found the end of the input")),
            Some(_) => self.attr_expr(inner),
        }
    }

    fn group(&mut self, inner: bool) -> Result<Filter, ParseError> {
        self.expect('(')?;
        self.enter()?;
        let filter = self.or_expr(inner)?;
        self.skip_ws();
        self.expect(')')?;
        self.depth -= 1;
        Ok(filter)
    }

    /// `"[" valFilter "]"`
    fn bracketed(&mut self) -> Result<Filter, ParseError> {
        self.expect('[')?;
        self.enter()?;
        let filter = self.or_expr(true)?;
        self.skip_ws();
        self.expect(']')?;
        self.depth -= 1;
        Ok(filter)
    }

    fn attr_expr(&mut self, inner: bool) -> Result<Filter, ParseError> {
        let start = self.pos;
        self.term()?;
        let path = self.attr_path()?;
        if inner && (path.urn.is_some() || path.sub_attr.is_some()) {
            return Err(ParseError {
                position: start,
                message: "inside [ ] name a sub-attribute only".into(),
            });
        }
        if self.peek() == Some('[') {
            if inner {
                return Err(self.error("value filters cannot be nested"));
            }
            if path.sub_attr.is_some() {
                return Err(
                    self.error("a value filter must follow an attribute, not a sub-attribute")
                );
            }
            let outer_deepest = std::mem::replace(&mut self.deepest, self.depth);
            let filter = self.bracketed()?;
            let deepest = self.deepest;
            self.deepest = outer_deepest.max(deepest);
            if self.peek() != Some('.') {
                return Ok(Filter::ValuePath(path, Box::new(filter)));
            }
            // `emails[type eq "work"].value eq "x"` (ENTRA.md §6).
            self.bump();
            self.term()?;
            let sub = AttrPath::new(self.attr_name()?);
            let comparison = self.operation(sub)?;
            let operands = match filter {
                Filter::And(mut operands) => {
                    operands.push(comparison);
                    operands
                }
                // Printed, an `or` gets parentheses inside the brackets: it must fit in them.
                Filter::Or(_) if deepest >= MAX_FILTER_DEPTH => {
                    return Err(self.error(format!(
                        "nested deeper than {MAX_FILTER_DEPTH} levels of parentheses and brackets"
                    )))
                }
                filter => vec![filter, comparison],
            };
            return Ok(Filter::ValuePath(path, Box::new(Filter::And(operands))));
        }
        self.operation(path)
    }

    /// `SP "pr"` or `SP compareOp SP compValue` after a path.
    fn operation(&mut self, path: AttrPath) -> Result<Filter, ParseError> {
        if !self.peek().is_some_and(char::is_whitespace) {
            return match self.peek() {
                None => Err(self.error("expected an operator after the attribute")),
                Some(c) => Err(self.error(format!("unexpected {c:?} in attribute name"))),
            };
        }
        self.skip_ws();
        let start = self.pos;
        let word: String = self
            .rest()
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        self.pos += word.len();
        if word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::from_word(&word) else {
            return Err(ParseError {
                position: start,
                message: if word.is_empty() {
                    "expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)".into()
                } else {
                    format!("unknown operator {word:?}")
                },
            });
        };
        if !self.peek().is_some_and(char::is_whitespace) {
            return Err(self.error(format!("expected a space and a value after {word:?}")));
        }
        self.skip_ws();
        let value = self.value()?;
        Ok(Filter::Compare(path, op, value))
    }

    fn value(&mut self) -> Result<CompValue, ParseError> {
        let start = self.pos;
        if self.peek() == Some('"') {
            let text = self.string()?;
            check_characters(&text, start)?;
            return Ok(CompValue::String(text));
        }
        let token: String = self
            .rest()
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '[' | ']' | '"'))
            .collect();
        if token.is_empty() {
            return Err(self.error("expected a value"));
        }
        check_characters(&token, start)?;
        self.pos += token.len();
        Ok(match token.to_ascii_lowercase().as_str() {
            "true" => CompValue::Bool(true),
            "false" => CompValue::Bool(false),
            "null" => CompValue::Null,
            _ if starts_like_number(&token) => match serde_json::from_str::<Number>(&token) {
                Ok(number) => CompValue::Number(number),
                // An unquoted id such as 54D382A4-… (ENTRA.md §4.4) is a string.
                Err(_) => CompValue::String(token),
            },
            _ => CompValue::String(token),
        })
    }

    /// A JSON string, escapes included.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let bytes = self.input.as_bytes();
        let mut index = self.pos + 1;
        while index < bytes.len() {
            match bytes[index] {
                b'\\' => index += 2,
                b'"' => {
                    let literal = &self.input[start..=index];
                    return match serde_json::from_str::<String>(literal) {
                        Ok(text) => {
                            self.pos = index + 1;
                            Ok(text)
                        }
                        Err(error) => Err(ParseError {
                            position: start,
                            message: format!("invalid string: {error}"),
                        }),
                    };
                }
                _ => index += 1,
            }
        }
        Err(ParseError {
            position: start,
            message: "unterminated string".into(),
        })
    }

    fn attr_path(&mut self) -> Result<AttrPath, ParseError> {
        let start = self.pos;
        let text: &str = {
            let rest = self.rest();
            let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
            &rest[..end]
        };
        if text.is_empty() {
            return Err(match self.peek() {
                Some(c) => self.error(format!("expected an attribute name, found {c:?}")),
                None => self.error("expected an attribute name"),
            });
        }
        self.pos += text.len();
        let (urn, rest) = match text.rsplit_once(':') {
            Some((urn, rest)) => (Some(urn.to_owned()), rest),
            None => (None, text),
        };
        let fail = |message: String| ParseError {
            position: start,
            message,
        };
        let mut parts = rest.split('.');
        let name = parts.next().unwrap_or_default();
        let sub = parts.next();
        if parts.next().is_some() {
            return Err(fail(format!("{text:?} has more than one sub-attribute")));
        }
        check_name(name).map_err(|message| fail(format!("{text:?}: {message}")))?;
        if let Some(sub) = sub {
            check_name(sub).map_err(|message| fail(format!("{text:?}: {message}")))?;
        }
        if let Some(urn) = &urn {
            if urn.is_empty() || urn.ends_with(':') {
                return Err(fail(format!("{text:?} is not a valid schema URI prefix")));
            }
        }
        Ok(AttrPath {
            urn,
            name: name.to_owned(),
            sub_attr: sub.map(str::to_owned),
        })
    }

    fn attr_name(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let name: String = self
            .rest()
            .chars()
            .take_while(|&c| is_path_char(c) && c != '.' && c != ':')
            .collect();
        self.pos += name.len();
        check_name(&name).map_err(|message| ParseError {
            position: start,
            message,
        })?;
        Ok(name)
    }
}

/// Refuses a comparison value holding a control character other than TAB, LF and CR: no
/// stored value holds one (`limits::check_text`), and PostgreSQL refuses NUL in the SQL a
/// filter compiles to.
fn check_characters(text: &str, start: usize) -> Result<(), ParseError> {
    match text
        .chars()
        .find(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        None => Ok(()),
        Some(c) => Err(ParseError {
            position: start,
            message: format!(
                "a value holds the control character U+{:04X}; control characters other than TAB, LF and CR are not allowed",
                u32::from(c)
            ),
        }),
    }
}

/// One operand stands for itself; two or more make a chain.
fn chain(mut operands: Vec<Filter>, make: fn(Vec<Filter>) -> Filter) -> Filter {
    if operands.len() == 1 {
        operands.remove(0)
    } else {
        make(operands)
    }
}

fn starts_like_number(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// RFC 7643 §2.1: `ATTRNAME = ALPHA *(nameChar)`, plus `$ref`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an attribute name is empty".into());
    }
    if name == "$ref" {
        return Ok(());
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err(format!("attribute name {name:?} must start with a letter"));
    }
    if let Some(bad) = chars.find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        return Err(format!("attribute name {name:?} may not contain {bad:?}"));
    }
    Ok(())
}

/// Runs `f` on a thread with a 256 KiB stack, so that a test of it fails if some walk recursed
/// as deep as its input is long.
#[cfg(test)]
pub(crate) fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawning a test thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Filter {
        Filter::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn eq(name: &str, value: &str) -> Filter {
        Filter::Compare(
            AttrPath::new(name),
            CompareOp::Eq,
            CompValue::String(value.into()),
        )
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let filter = parse(r#"a eq "1" or b eq "2" and c eq "3""#);
        assert_eq!(
            filter,
            Filter::Or(vec![
                eq("a", "1"),
                Filter::And(vec![eq("b", "2"), eq("c", "3")])
            ])
        );
    }

    #[test]
    fn printing_keeps_parentheses_that_matter() {
        let filter = parse(r#"(a eq "1" or b eq "2") and c eq "3""#);
        assert_eq!(filter.to_string(), r#"(a eq "1" or b eq "2") and c eq "3""#);
        let right_nested = parse(r#"a eq "1" and (b eq "2" and c eq "3")"#);
        assert_eq!(parse(&right_nested.to_string()), right_nested);
    }

    #[test]
    fn urn_paths_split_at_the_last_colon() {
        let filter = parse(r#"urn:ietf:params:scim:schemas:core:2.0:User:name.givenName eq "x""#);
        let Filter::Compare(path, ..) = filter else {
            panic!()
        };
        assert_eq!(
            path.urn.as_deref(),
            Some("urn:ietf:params:scim:schemas:core:2.0:User")
        );
        assert_eq!(path.name, "name");
        assert_eq!(path.sub_attr.as_deref(), Some("givenName"));
    }

    #[test]
    fn operators_and_keywords_ignore_case() {
        assert_eq!(
            parse(r#"userName EQ "a" AND title Pr"#),
            parse(r#"userName eq "a" and title pr"#)
        );
    }

    #[test]
    fn bare_values_are_strings_unless_numbers_or_literals() {
        let Filter::Compare(_, _, value) = parse("externalId eq jyoung") else {
            panic!()
        };
        assert_eq!(value, CompValue::String("jyoung".into()));
        let Filter::Compare(_, _, value) = parse("id eq 54D382A4-4A3C-4B0C-9C59") else {
            panic!()
        };
        assert_eq!(value, CompValue::String("54D382A4-4A3C-4B0C-9C59".into()));
        let Filter::Compare(_, _, value) = parse("count gt -1.5e3") else {
            panic!()
        };
        assert_eq!(value.to_string(), "-1500.0");
        let Filter::Compare(_, _, value) = parse("active eq True") else {
            panic!()
        };
        assert_eq!(value, CompValue::Bool(true));
    }

    #[test]
    fn a_filtered_path_compared_becomes_a_value_filter() {
        assert_eq!(
            parse(r#"emails[type eq "work"].value eq "a@b.c""#),
            parse(r#"emails[type eq "work" and value eq "a@b.c"]"#)
        );
    }

    #[test]
    fn errors_say_where() {
        let error = Filter::parse(r#"userName eq "abc"#).unwrap_err();
        assert_eq!(error.position, 12);
        assert!(error.message.contains("unterminated"));
        let error = Filter::parse(r#"userName zz "x""#).unwrap_err();
        assert_eq!(error.position, 9);
        assert!(Filter::parse("").is_err());
        assert!(Filter::parse("emails[value[type eq 1]]").is_err());
        assert!(Filter::parse("not userName pr").is_err());
    }

    #[test]
    fn control_characters_in_values_are_refused_quoted_or_bare() {
        for input in [
            "userName eq \"a\\u0000b\"",
            "userName eq a\u{0}b",
            "userName eq \"\\u001b[31m\"",
            "userName eq x\u{7f}",
            "userName eq \"\\u0085\"",
        ] {
            let error = Filter::parse(input).unwrap_err();
            assert!(
                error.message.contains("control character"),
                "{input:?}: {error}"
            );
            assert_eq!(error.position, 12, "{input:?}");
        }
        assert!(Filter::parse("addresses.formatted co \"a\\nb\\tc\\r\"").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let input = format!("{}a pr{}", "(".repeat(1_000), ")".repeat(1_000));
        assert!(Filter::parse(&input)
            .unwrap_err()
            .message
            .contains("nested deeper"));
    }

    fn nested(depth: usize) -> String {
        // `not (a pr and not (a pr and … ))`: every level is a paren, a `not` and an `and`.
        let mut text = "a pr".to_owned();
        for _ in 0..depth {
            text = format!("not (a pr and {text})");
        }
        text
    }

    #[test]
    fn nesting_is_allowed_to_the_limit_and_refused_one_level_beyond() {
        on_small_stack(|| {
            let deepest = parse(&nested(MAX_FILTER_DEPTH));
            assert_eq!(parse(&deepest.to_string()), deepest);
            let error = Filter::parse(&nested(MAX_FILTER_DEPTH + 1)).unwrap_err();
            assert!(error.message.contains("nested deeper"), "{error}");
            let in_brackets = format!("emails[{}]", nested(MAX_FILTER_DEPTH - 1));
            assert!(Filter::parse(&in_brackets).is_ok());
            let in_brackets = format!("emails[{}]", nested(MAX_FILTER_DEPTH));
            assert!(Filter::parse(&in_brackets).is_err());
        });
    }

    #[test]
    fn a_filtered_path_compared_is_refused_if_its_printed_form_would_nest_too_deeply() {
        let inner = nested(MAX_FILTER_DEPTH - 1);
        // Printed, `[x or y].value eq 1` becomes `[(x or y) and value eq 1]`: one level more.
        let input = format!("emails[a pr or {inner}].value eq 1");
        assert!(Filter::parse(&input)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        let fits = format!(
            "emails[a pr or {}].value eq 1",
            nested(MAX_FILTER_DEPTH - 2)
        );
        let filter = parse(&fits);
        assert_eq!(parse(&filter.to_string()), filter);
    }

    /// `count` terms joined by `joiner`, each naming its own value.
    fn chain_of(count: usize, joiner: &str) -> String {
        (0..count)
            .map(|i| format!("userName eq \"u{i}\""))
            .collect::<Vec<_>>()
            .join(joiner)
    }

    #[test]
    fn a_chain_at_the_term_limit_is_one_flat_node() {
        on_small_stack(|| {
            let input = chain_of(MAX_FILTER_TERMS, " and ");
            assert!(input.len() <= MAX_FILTER_LENGTH);
            let Filter::And(operands) = parse(&input) else {
                panic!("not an and chain")
            };
            assert_eq!(operands.len(), MAX_FILTER_TERMS);
            let filter = Filter::And(operands);
            assert_eq!(
                filter.equalities().map(|all| all.len()),
                Some(MAX_FILTER_TERMS)
            );
            assert_eq!(parse(&filter.to_string()), filter);
        });
    }

    #[test]
    fn one_term_more_than_the_limit_is_refused_naming_the_limit() {
        for joiner in [" and ", " or "] {
            let input = chain_of(MAX_FILTER_TERMS + 1, joiner);
            let error = Filter::parse(&input).unwrap_err();
            assert!(
                error.message.contains(&format!(
                    "more than {MAX_FILTER_TERMS} attribute expressions"
                )),
                "{error}"
            );
        }
        // A value filter counts itself and each expression inside it.
        let inner = chain_of(MAX_FILTER_TERMS, " or ").replace("userName", "value");
        assert!(Filter::parse(&format!("emails[{inner}]")).is_err());
    }

    #[test]
    fn a_30000_term_chain_is_refused_before_parsing_and_the_error_does_not_echo_it() {
        on_small_stack(|| {
            // The filter of issue 11 that overflowed the stack: 480 KB.
            let input = chain_of(30_000, " and ");
            assert!(input.len() > 400_000);
            let error = Filter::parse(&input).unwrap_err();
            assert!(
                error
                    .message
                    .contains(&format!("at most {MAX_FILTER_LENGTH}")),
                "{error}"
            );
            let scim = error.into_filter_error(&input);
            assert_eq!(scim.status, 400);
            assert_eq!(scim.scim_type, Some(crate::error::ScimType::InvalidFilter));
            assert!(scim.detail.len() < 400, "{}", scim.detail);
            // The shortest terms fit the length limit many times over the term limit.
            let short = vec!["a pr"; 1_800].join(" and ");
            assert!(short.len() <= MAX_FILTER_LENGTH);
            let error = Filter::parse(&short).unwrap_err();
            assert!(error.message.contains("attribute expressions"), "{error}");
            assert!(PatchPath::parse(&format!("emails[{short}]")).is_err());
        });
    }

    #[test]
    fn walks_over_a_30000_operand_chain_do_not_recurse_along_it() {
        on_small_stack(|| {
            let filter = Filter::And(
                (0..30_000)
                    .map(|i| eq("userName", &i.to_string()))
                    .collect(),
            );
            assert_eq!(filter.equalities().map(|all| all.len()), Some(30_000));
            let printed = filter.to_string();
            assert!(printed.starts_with("userName eq \"0\" and userName eq \"1\""));
            let copy = filter.clone();
            assert_eq!(copy, filter);
            drop(copy);
        });
    }

    #[test]
    fn patch_paths_parse_and_print() {
        for input in [
            "members",
            "name.familyName",
            r#"emails[type eq "work"].value"#,
            r#"members[value eq "2819c223"]"#,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
            r#"urn:ietf:params:scim:schemas:core:2.0:User:emails[type eq "work"].value"#,
        ] {
            let path = PatchPath::parse(input).unwrap();
            assert_eq!(path.to_string(), input);
        }
        assert!(PatchPath::parse("name.givenName[type eq \"x\"]").is_err());
        assert!(PatchPath::parse("emails[type eq \"work\"]value").is_err());
        assert!(PatchPath::parse("").is_err());
    }
}
