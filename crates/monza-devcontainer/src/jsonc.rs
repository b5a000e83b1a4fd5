//! JSON with comments, as devcontainer.json is written: `//` and `/* */` comments and
//! trailing commas, with an optional byte-order mark.
//!
//! Comments and trailing commas are replaced by spaces (newlines kept), so the text that
//! reaches `serde_json` has the same lines and columns as the file and its error positions
//! point at the right place.

use crate::error::ParseError;

/// Parses JSON-with-comments text into a JSON value.
pub fn parse(text: &str) -> Result<serde_json::Value, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let without_comments = strip_comments(text)?;
    let plain = strip_trailing_commas(&without_comments);
    serde_json::from_str(&plain).map_err(|err| ParseError::Malformed {
        message: err.to_string(),
    })
}

/// Replaces every comment outside strings by spaces, keeping newlines.
fn strip_comments(text: &str) -> Result<String, ParseError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                copy_string(&mut chars, &mut out);
            }
            '/' if chars.peek() == Some(&'/') => {
                out.push_str("  ");
                chars.next();
                while let Some(&next) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    blank(next, &mut out);
                    chars.next();
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                out.push_str("  ");
                chars.next();
                let mut closed = false;
                while let Some(next) = chars.next() {
                    if next == '*' && chars.peek() == Some(&'/') {
                        chars.next();
                        out.push_str("  ");
                        closed = true;
                        break;
                    }
                    if next == '\n' {
                        line += 1;
                    }
                    blank(next, &mut out);
                }
                if !closed {
                    return Err(ParseError::Malformed {
                        message: format!("comment opened at line {start} is never closed"),
                    });
                }
            }
            '\n' => {
                line += 1;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Copies the rest of a string literal (after its opening quote), escapes included. An
/// unterminated string is copied as is; `serde_json` reports it.
fn copy_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) {
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    out.push(escaped);
                }
            }
            '"' => return,
            _ => {}
        }
    }
}

/// A comment character as blank space of the same byte length; newlines stay, so line
/// numbers do not move.
fn blank(c: char, out: &mut String) {
    if c == '\n' || c == '\r' {
        out.push(c);
    } else {
        out.extend(std::iter::repeat_n(' ', c.len_utf8()));
    }
}

/// Replaces by a space every comma outside strings that follows a value and is followed
/// (after whitespace) by `}` or `]`. Runs after [`strip_comments`], so comments between the
/// comma and the bracket are already blank. A comma with no value before it (`[,]`) is
/// kept, for `serde_json` to reject.
fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut last_significant = None;
    for (index, c) in text.char_indices() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                last_significant = Some(c);
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            ',' => {
                let next = text[index + 1..].chars().find(|c| !c.is_whitespace());
                let follows_value = !matches!(last_significant, None | Some('{' | '[' | ','));
                if follows_value && matches!(next, Some('}' | ']')) {
                    out.push(' ');
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        if !c.is_whitespace() {
            last_significant = Some(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let err = parse("{\n\"a\": 1 /* never closed\n}").unwrap_err();
        assert_eq!(
            err,
            ParseError::Malformed {
                message: "comment opened at line 2 is never closed".into()
            }
        );
    }

    #[test]
    fn syntax_errors_report_the_original_line() {
        let err = parse("{\n  // comment\n  /* a\n  b */\n  \"a\": 1\n  \"b\": 2\n}").unwrap_err();
        let ParseError::Malformed { message } = err else {
            panic!("expected malformed, got {err:?}");
        };
        assert!(message.contains("line 6"), "{message}");
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
