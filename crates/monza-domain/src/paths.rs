//! Rules for paths inside a sandbox and for uploaded file names.

use crate::error::{Error, Result};

/// Longest accepted path inside a sandbox, in bytes: Linux's PATH_MAX (4096) less room for
/// the prefix the engine puts in front of it (the container's root on the host,
/// `/var/lib/docker/overlay2/<id>/merged` is 96 bytes), because the engine refuses a longer
/// whole with ENAMETOOLONG (seen from 3,991 bytes on), which a documented limit must never
/// let through.
pub const MAX_PATH_LEN: usize = 3072;

/// Longest accepted file name, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Checks a path inside a sandbox: absolute, no `..` component, no NUL byte, at most
/// [`MAX_PATH_LEN`] bytes. Returns it without a trailing slash (except for `/`).
pub fn sandbox_path(what: &str, path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if path.contains('\0') {
        return Err(Error::invalid(format!("{what} contains a NUL byte")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::invalid(format!(
            "{what} is longer than {MAX_PATH_LEN} bytes"
        )));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "{what} {path:?} is not absolute: it must start with /"
        )));
    }
    if path.split('/').any(|component| component == "..") {
        return Err(Error::invalid(format!(
            "{what} {path:?} contains a \"..\" component"
        )));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}

/// Reduces a client-supplied file name to a safe base name: the part after the last `/` or
/// `\`, without control characters, not `.` or `..`, at most [`MAX_NAME_LEN`] bytes.
pub fn safe_file_name(name: &str) -> Result<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        return Err(Error::invalid(format!(
            "file name {name:?} has no usable base name"
        )));
    }
    let mut end = cleaned.len().min(MAX_NAME_LEN);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    Ok(cleaned[..end].to_owned())
}

/// Joins a checked directory and a safe base name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_absolute_paths_and_trims_trailing_slashes() {
        assert_eq!(sandbox_path("path", "/workspace/").unwrap(), "/workspace");
        assert_eq!(sandbox_path("path", "/").unwrap(), "/");
        assert_eq!(sandbox_path("path", "/a/./b").unwrap(), "/a/./b");
    }

    #[test]
    fn refuses_relative_dotdot_nul_and_overlong_paths() {
        for bad in ["", "workspace", "/a/../etc", "/..", "/a\0b"] {
            assert!(
                matches!(sandbox_path("path", bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert!(matches!(
            sandbox_path("path", &long),
            Err(Error::InvalidInput(_))
        ));
        // `..` inside a name is fine; only a whole component is refused.
        assert!(sandbox_path("path", "/a/..b").is_ok());
    }

    #[test]
    fn file_names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_file_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(safe_file_name("C:\\Users\\x\\a.txt").unwrap(), "a.txt");
        assert_eq!(safe_file_name("a\nb\r.txt").unwrap(), "ab.txt");
        for bad in ["", "..", ".", "dir/", "\n"] {
            assert!(safe_file_name(bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(200);
        let safe = safe_file_name(&long).unwrap();
        assert!(safe.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn join_adds_one_slash() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/w", "a"), "/w/a");
    }
}
