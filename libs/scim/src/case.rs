//! The one way Rollcall compares text without case: Unicode default full case folding
//! (Unicode §3.13, `CaseFolding.txt` mappings C and F, through the `caseless` crate).
//!
//! Every comparison of a `caseExact: false` value goes through [`fold`]: the uniqueness claims
//! of userName and group displayName, the stored lookup keys (`user_name_lower`,
//! `external_id_lower`, `display_name_lower`), the SQL a filter compiles to and the filters
//! evaluated in memory. One function, so that what a lookup finds and what a create refuses
//! as a duplicate can never disagree (`İlker` is found by the name it was created with;
//! `straße` and `STRASSE` are one name to the claim and to the lookup alike).
//!
//! Decisions:
//! - full folding, not simple: `ß`, `ẞ` and `SS` fold alike (`ss`), as do `ﬃ` and `ffi`;
//! - not Turkic: `İ` (U+0130) folds to `i` + U+0307 and `I` to `i`, whatever the tenant's
//!   language; dotless `ı` stays itself. A name is found by any casing of itself, never by a
//!   different letter;
//! - Greek final sigma `ς`, `σ` and `Σ` fold alike (`σ`), unlike `str::to_lowercase`, which
//!   keeps `ς` at the end of a word;
//! - no Unicode normalization: values are stored as sent, and a precomposed `é` and `e` with
//!   a combining accent are different names (Entra sends NFC).

use std::borrow::Cow;
use std::cmp::Ordering;

use caseless::Caseless;

/// Names the folding that stored keys were computed with: a stored key computed with another
/// (an older Unicode version, or PostgreSQL's `lower()`) must be computed again.
pub fn folding() -> String {
    let (major, minor, update) = caseless::UNICODE_VERSION;
    format!("unicode-{major}.{minor}.{update}-default-full-case-folding")
}

/// `text` case-folded: the key under which it is compared, claimed and looked up.
///
/// Text with no uppercase ASCII and nothing beyond ASCII is returned as it is.
pub fn fold(text: &str) -> Cow<'_, str> {
    if text
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(caseless::default_case_fold_str(text))
    }
}

/// Whether two texts are equal without case (their folds are equal).
pub fn equal(left: &str, right: &str) -> bool {
    left == right || left.chars().default_caseless_match(right.chars())
}

/// Orders two texts without case (by their folds), for `sortBy` and `gt`/`lt`.
pub fn cmp(left: &str, right: &str) -> Ordering {
    left.chars()
        .default_case_fold()
        .cmp(right.chars().default_case_fold())
}

/// The most UTF-8 bytes the fold of one character takes (U+0390 `ΐ`, two bytes, folds to
/// three two-byte characters): a key is at most this many bytes per character of its value.
pub const MAX_FOLDED_BYTES_PER_CHAR: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turkish_dotted_capital_i_is_found_by_any_casing_of_itself() {
        assert!(equal("İlker@x.test", "İLKER@X.TEST"));
        assert!(equal("İlker@x.test", "i\u{307}lker@x.test"));
        assert_eq!(fold("İlker"), fold("i\u{307}LKER"));
        // A different letter is a different name: plain `i`, and dotless `ı`.
        assert!(!equal("İlker", "ilker"));
        assert!(!equal("ılker", "ilker"));
        assert!(equal("ILKER", "ilker"));
    }

    #[test]
    fn german_sharp_s_folds_like_double_s_in_every_case() {
        assert_eq!(fold("straße"), "strasse");
        assert!(equal("straße@x.test", "STRASSE@x.test"));
        assert!(equal("STRAẞE", "strasse"));
        assert!(equal("Straße", "STRAẞE"));
        // str::to_lowercase, used before, tells them apart.
        assert_ne!("straße".to_lowercase(), "STRASSE".to_lowercase());
    }

    #[test]
    fn greek_final_and_medial_sigma_fold_alike() {
        assert!(equal("ΟΔΟΣ", "οδος"));
        assert!(equal("οδοσ", "οδος"));
        assert_eq!(fold("Σ"), fold("ς"));
        assert_ne!("ΟΔΟΣ".to_lowercase(), "οδοσ".to_lowercase());
    }

    #[test]
    fn title_case_digraphs_fold_with_their_upper_and_lower_forms() {
        // U+01C4 Ǆ, U+01C5 ǅ (title case), U+01C6 ǆ.
        assert!(equal("\u{1C5}ak", "\u{1C4}AK"));
        assert!(equal("\u{1C5}ak", "\u{1C6}ak"));
        assert_eq!(fold("\u{1C5}"), "\u{1C6}");
    }

    #[test]
    fn ascii_folds_to_lowercase_without_copying_what_is_already_folded() {
        assert!(matches!(fold("ada@example.com"), Cow::Borrowed(_)));
        assert_eq!(fold("Ada@Example.COM"), "ada@example.com");
    }

    #[test]
    fn ordering_follows_the_folds() {
        assert_eq!(cmp("STRASSE", "straße"), Ordering::Equal);
        assert_eq!(cmp("Ada", "bob"), Ordering::Less);
        assert_eq!(cmp("ΣΑΣ", "σας"), Ordering::Equal);
    }

    #[test]
    fn no_character_folds_to_more_than_the_documented_bytes() {
        let widest = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .map(|c| fold(c.encode_utf8(&mut [0; 4])).len())
            .max();
        assert_eq!(widest, Some(MAX_FOLDED_BYTES_PER_CHAR));
    }

    #[test]
    fn filters_evaluated_in_memory_fold_both_sides() {
        use crate::filter::Filter;
        use crate::matching::matches;
        use crate::schema::USER_RESOURCE;
        let user = serde_json::json!({"userName": "straße@x.test", "displayName": "İlker ΟΔΟΣ"});
        for (filter, expected) in [
            (r#"userName eq "STRASSE@X.TEST""#, true),
            (r#"userName sw "STRAS""#, true),
            (r#"displayName co "i̇lker οδοσ""#, true),
            (r#"displayName eq "ilker ΟΔΟΣ""#, false),
            (r#"userName gt "STRASSE@X.TEST""#, false),
        ] {
            let filter = Filter::parse(filter).unwrap();
            assert_eq!(
                matches(&USER_RESOURCE, &user, &filter),
                expected,
                "{filter:?}"
            );
        }
    }
}
