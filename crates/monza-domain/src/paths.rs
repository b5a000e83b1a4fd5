//! Rules for paths inside a sandbox and for uploaded file names.

use crate::error::{Error, FileProblem, Result};

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
    if path
        .split('/')
        .any(|component| component.len() > MAX_NAME_LEN)
    {
        return Err(Error::invalid(format!(
            "{what} has a component longer than {MAX_NAME_LEN} bytes, which no Linux file \
             system accepts"
        )));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}

/// Checks a client's file name: stored exactly as given or refused (`invalid_path`), never
/// changed into another name (which would land the file at another path, maybe over another
/// file). One path component: not empty, `.` or `..`, no `/`, NUL or control character (no
/// client means those, and terminals and tools mangle them), at most [`MAX_NAME_LEN`] bytes.
pub fn safe_file_name(name: &str) -> Result<String> {
    let refuse = |why: &str| {
        Err(Error::file(
            FileProblem::InvalidPath,
            format!("file name {name:?} {why}; it is stored exactly as given or not at all"),
        ))
    };
    if name.is_empty() || name == "." || name == ".." {
        return refuse("is not a file name");
    }
    if name.contains('/') {
        return refuse("contains a /: name the directory in `path` and the file alone here");
    }
    if name.contains('\0') {
        return refuse("contains a NUL byte");
    }
    if name.chars().any(char::is_control) {
        return refuse("contains a control character");
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::file(
            FileProblem::InvalidPath,
            format!(
                "file name is {} bytes long; Linux file names are at most {MAX_NAME_LEN} bytes",
                name.len()
            ),
        ));
    }
    Ok(name.to_owned())
}

/// Kernel file systems the engine mounts in every container. The engine's file API works on
/// the container's root file system and its volumes, never on these: a file "uploaded"
/// there would land in the image layer underneath, invisible to the sandbox's processes, and
/// a "download" would read that layer instead of what the sandbox sees.
pub const KERNEL_MOUNTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Files the engine bind-mounts into every container: they cannot be replaced through the
/// file API (the engine answers "device or resource busy").
pub const ENGINE_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

/// Files the engine reads to run every command as a user: were one of them a directory,
/// every later command would fail to start.
pub const IDENTITY_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Whether `path` (checked by [`sandbox_path`]) is `prefix` or under it.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Refuses a checked path on a file system the engine's file API cannot reach
/// ([`KERNEL_MOUNTS`]).
pub fn reachable(what: &str, path: &str) -> Result<()> {
    match KERNEL_MOUNTS.iter().find(|m| is_under(path, m)) {
        Some(mount) => Err(Error::invalid(format!(
            "{what} {path:?} is under {mount}, a kernel file system the sandbox sees but the \
             file API cannot reach: use execute to read or write it"
        ))),
        None => Ok(()),
    }
}

/// Refuses an upload of `name` into the checked directory `dir` that could not land where
/// the sandbox sees it, or that would break the sandbox: under a kernel file system, over
/// or under a file the engine mounts ([`ENGINE_FILES`]), or turning a file every command
/// needs into a directory ([`IDENTITY_FILES`]).
pub fn upload_destination(dir: &str, name: &str) -> Result<()> {
    reachable("path", dir)?;
    let target = join(dir, name);
    if let Some(file) = ENGINE_FILES.iter().find(|f| is_under(&target, f)) {
        return Err(Error::invalid(format!(
            "{target:?}: {file} is mounted into the sandbox by the engine and cannot be \
             replaced or used as a directory through the file API"
        )));
    }
    if let Some(file) = IDENTITY_FILES.iter().find(|f| is_under(dir, f)) {
        return Err(Error::invalid(format!(
            "path {dir:?} would make {file} a directory; the engine reads {file} to start \
             every command"
        )));
    }
    Ok(())
}

/// Checks a path that a file operation changes (made, moved, removed, edited): a
/// [`sandbox_path`] that is not the root, not under a kernel file system, not a file the
/// engine mounts ([`ENGINE_FILES`]) and not one every command needs ([`IDENTITY_FILES`]:
/// moved or removed, no later command would start). Returns it without `.` components or
/// repeated slashes, so no spelling of a refused path gets past.
pub fn changeable(what: &str, path: &str) -> Result<String> {
    let checked = sandbox_path(what, path)?;
    let parts: Vec<&str> = checked
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    let path = format!("/{}", parts.join("/"));
    if path == "/" {
        return Err(Error::invalid(format!(
            "{what} is the root directory, which cannot be changed"
        )));
    }
    if let Some(mount) = KERNEL_MOUNTS.iter().find(|m| is_under(&path, m)) {
        return Err(Error::invalid(format!(
            "{what} {path:?} is under {mount}, a kernel file system: use execute to change it"
        )));
    }
    if let Some(file) = ENGINE_FILES.iter().find(|f| is_under(&path, f)) {
        return Err(Error::invalid(format!(
            "{what} {path:?}: {file} is mounted into the sandbox by the engine and cannot be \
             changed through the file API"
        )));
    }
    if let Some(file) = IDENTITY_FILES.iter().find(|f| path == **f) {
        return Err(Error::invalid(format!(
            "{what} {path:?}: the engine reads {file} to start every command, so it cannot be \
             moved or removed through the file API (edit it in place instead)"
        )));
    }
    Ok(path)
}

/// Highest permission bits a client may give a file: `rwx` for owner, group and others.
/// Setuid, setgid and sticky bits are refused: a file written through the API is data, and a
/// setuid program owned by the sandbox's user would be a trap for anyone running it.
pub const MAX_FILE_MODE: u32 = 0o777;

/// Checks the permission bits a client asked for.
pub fn file_mode(mode: u32) -> Result<u32> {
    if mode > MAX_FILE_MODE {
        return Err(Error::invalid(format!(
            "mode {mode:o} is not a permission mode: give three octal digits, 000 to 777 \
             (setuid, setgid and sticky bits are not accepted)"
        )));
    }
    Ok(mode)
}

/// Parses a mode as clients write it: octal digits, optionally with a leading `0` or `0o`
/// (`644`, `0755`, `0o600`).
pub fn parse_file_mode(text: &str) -> Result<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(Error::invalid(format!(
            "mode {text:?} is not an octal permission mode such as 644 or 0755"
        )));
    }
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|e| Error::invalid(format!("mode {text:?}: {e}")))?;
    file_mode(mode)
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
    fn modes_are_octal_permission_bits_only() {
        assert_eq!(parse_file_mode("644").unwrap(), 0o644);
        assert_eq!(parse_file_mode("0755").unwrap(), 0o755);
        assert_eq!(parse_file_mode("0o600").unwrap(), 0o600);
        assert_eq!(parse_file_mode("0").unwrap(), 0);
        for bad in [
            "", "0o", "8", "abc", "-644", "4755", "1777", "07777", "12345", " 644",
        ] {
            assert!(
                matches!(parse_file_mode(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        assert!(file_mode(0o1000).is_err());
    }

    #[test]
    fn changes_are_refused_on_the_root_kernel_engine_and_identity_files_however_spelled() {
        assert_eq!(changeable("path", "/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(
            changeable("path", "/etc/passwd.d").unwrap(),
            "/etc/passwd.d"
        );
        for bad in [
            "/",
            "/.",
            "//",
            "/proc/1",
            "/etc/./hosts",
            "//etc/resolv.conf",
            "/etc/hostname/x",
            "/etc/./passwd",
            "/etc/group",
        ] {
            assert!(
                matches!(changeable("path", bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

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
    fn file_names_are_kept_exactly_or_refused_never_changed() {
        // What a Linux file system stores is kept as it is, spaces and backslashes included.
        for kept in [
            "back\\slash.txt",
            " lead.txt",
            "trail.txt ",
            "C:\\Users\\x\\a.txt",
            "é t.txt",
        ] {
            assert_eq!(safe_file_name(kept).unwrap(), kept);
        }
        // What it cannot be stored as is refused with `invalid_path`.
        for bad in [
            "",
            "..",
            ".",
            "dir/",
            "../../etc/passwd",
            "\n",
            "a\nb.txt",
            "a\u{7f}b",
        ] {
            assert!(
                matches!(
                    safe_file_name(bad),
                    Err(Error::File {
                        problem: FileProblem::InvalidPath,
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        // Too long is refused, never cut to another name.
        assert!(safe_file_name(&"é".repeat(200)).is_err());
        assert_eq!(safe_file_name(&"é".repeat(127)).unwrap().len(), 254);
        assert!(safe_file_name("a\0b").is_err());
    }

    #[test]
    fn a_component_longer_than_name_max_is_refused() {
        let long = format!("/workspace/{}/x", "a".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(
            sandbox_path("path", &long),
            Err(Error::InvalidInput(_))
        ));
        let fits = format!("/workspace/{}", "a".repeat(MAX_NAME_LEN));
        assert!(sandbox_path("path", &fits).is_ok());
    }

    #[test]
    fn kernel_mounts_and_engine_files_are_refused_as_destinations() {
        for dir in ["/proc", "/proc/1", "/sys/fs", "/dev", "/dev/shm"] {
            assert!(reachable("path", dir).is_err(), "{dir}");
            assert!(upload_destination(dir, "x").is_err(), "{dir}");
        }
        for (dir, name) in [
            ("/etc", "hosts"),
            ("/etc", "hostname"),
            ("/etc", "resolv.conf"),
            ("/etc/hostname", "x"),
            ("/etc/passwd", "x"),
            ("/etc/group/a", "x"),
        ] {
            assert!(upload_destination(dir, name).is_err(), "{dir} {name}");
        }
        for (dir, name) in [
            ("/workspace", "x"),
            ("/devices", "x"),
            ("/etc", "passwd"),
            ("/etc", "hosts.allow"),
            ("/", "proc.txt"),
        ] {
            assert!(upload_destination(dir, name).is_ok(), "{dir} {name}");
        }
    }

    #[test]
    fn join_adds_one_slash() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/w", "a"), "/w/a");
    }
}
