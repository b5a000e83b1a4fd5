//! JSON with comments, as devcontainer.json is written: `//` and `/* */` comments and
//! trailing commas, with an optional byte-order mark; nothing else of JavaScript (no single
//! quotes, unquoted keys, hexadecimal numbers or missing commas), as the reference CLI reads
//! it. The parsing is dprint's `jsonc-parser`; this module only fixes the dialect and says
//! where a malformed file went wrong.

use jsonc_parser::ParseOptions;

use crate::error::ParseError;

/// The dialect of devcontainer.json (VS Code's JSONC).
const DIALECT: ParseOptions = ParseOptions {
    allow_comments: true,
    allow_trailing_commas: true,
    allow_loose_object_property_names: false,
    allow_missing_commas: false,
    allow_single_quoted_strings: false,
    allow_hexadecimal_numbers: false,
    allow_unary_plus_numbers: false,
    allow_bare_decimal_point_numbers: false,
    allow_extended_string_escapes: false,
    allow_non_finite_numbers: false,
};

/// Parses JSON-with-comments text into a JSON value. An empty document is malformed.
pub fn parse(text: &str) -> Result<serde_json::Value, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Option<serde_json::Value> = jsonc_parser::parse_to_serde_value(text, &DIALECT)
        .map_err(|err| ParseError::Malformed {
            message: err.to_string(),
        })?;
    value.ok_or_else(|| ParseError::Malformed {
        message: "the file holds no JSON value".into(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The message of the error that says `text` is malformed.
    fn malformed(text: &str) -> String {
        match parse(text) {
            Err(ParseError::Malformed { message }) => message,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn plain_json_parses() {
        assert_eq!(parse(r#"{"a": [1, 2]}"#).unwrap(), json!({"a": [1, 2]}));
    }

    #[test]
    fn line_and_block_comments_are_ignored() {
        let text = "// header\n{\n  /* block\n  comment */ \"a\": 1, // trailing\n  \"b\": /* inline */ 2\n}\n// footer";
        assert_eq!(parse(text).unwrap(), json!({"a": 1, "b": 2}));
    }

    #[test]
    fn comment_markers_inside_strings_are_kept() {
        let text =
            r#"{"url": "http://example.com//x", "glob": "/* not a comment */", "q": "a\"//b"}"#;
        assert_eq!(
            parse(text).unwrap(),
            json!({"url": "http://example.com//x", "glob": "/* not a comment */", "q": "a\"//b"})
        );
    }

    #[test]
    fn trailing_commas_are_accepted_in_objects_and_arrays() {
        let text = "{\"a\": [1, 2, ],\n \"b\": {\"c\": 3,\n // comment\n },\n}";
        assert_eq!(parse(text).unwrap(), json!({"a": [1, 2], "b": {"c": 3}}));
    }

    #[test]
    fn commas_inside_strings_are_not_trailing_commas() {
        let text = r#"{"a": ",]", "b": ", }", }"#;
        assert_eq!(parse(text).unwrap(), json!({"a": ",]", "b": ", }"}));
    }

    #[test]
    fn escaped_backslash_before_closing_quote_ends_the_string() {
        let text = "{\"a\": \"C:\\\\\", // comment\n \"b\": 1}";
        assert_eq!(parse(text).unwrap(), json!({"a": "C:\\", "b": 1}));
    }

    #[test]
    fn non_ascii_text_in_comments_and_strings() {
        let text = "{\"é\": \"ü//ñ\", /* ça */ \"b\": 1, // ✓\n}";
        assert_eq!(parse(text).unwrap(), json!({"é": "ü//ñ", "b": 1}));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(parse("\u{feff}{\"a\": 1}").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn unterminated_block_comment_is_malformed_with_its_line() {
        let message = malformed("{\n\"a\": 1 /* never closed\n}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn syntax_errors_report_the_original_line() {
        let message = malformed("{\n  // comment\n  /* a\n  b */\n  \"a\": 1\n  \"b\": 2\n}");
        // The comma is missing at the end of line 5, where `"a": 1` ends.
        assert!(message.contains("line 5"), "{message}");
    }

    #[test]
    fn javascript_beyond_comments_and_trailing_commas_is_refused() {
        for text in [
            "{a: 1}",
            "{'a': 1}",
            "{\"a\": 0x10}",
            "{\"a\": +1}",
            "{\"a\": 1 \"b\": 2}",
            "",
            "  // only a comment",
        ] {
            assert!(
                matches!(parse(text), Err(ParseError::Malformed { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_lone_comma_is_still_an_error() {
        assert!(matches!(
            parse("[1,,]").unwrap_err(),
            ParseError::Malformed { .. }
        ));
        assert!(matches!(
            parse("{,}").unwrap_err(),
            ParseError::Malformed { .. }
        ));
    }
}
