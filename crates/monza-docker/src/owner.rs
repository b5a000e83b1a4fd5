//! Who owns what the file API writes: a user as devcontainer.json names it (`remoteUser`,
//! `containerUser`, the image's `USER`), resolved to numeric ids through the sandbox's own
//! `/etc/passwd` and `/etc/group`, as the engine resolves `docker exec -u`.

use monza_domain::{Error, Result};

/// A numeric owner, as a tar header carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl Owner {
    pub const ROOT: Self = Self { uid: 0, gid: 0 };
}

/// A user spec split into its user and optional group: `name`, `1000`, `name:group`,
/// `1000:1000`. Empty means root (an image without `USER`).
pub(crate) struct UserSpec<'a> {
    pub user: &'a str,
    pub group: Option<&'a str>,
}

impl<'a> UserSpec<'a> {
    pub fn parse(spec: &'a str) -> Self {
        match spec.split_once(':') {
            Some((user, group)) => Self {
                user,
                group: Some(group),
            },
            None => Self {
                user: spec,
                group: None,
            },
        }
    }

    /// Whether resolving needs `/etc/passwd` (a name, or a uid whose group comes from it).
    pub fn needs_passwd(&self) -> bool {
        !self.user.is_empty() && (self.user.parse::<u64>().is_err() || self.group.is_none())
    }

    /// Whether resolving needs `/etc/group` (a group given by name).
    pub fn needs_group(&self) -> bool {
        self.group.is_some_and(|g| g.parse::<u64>().is_err())
    }

    /// The numeric owner, looked up in the sandbox's `passwd` and `group` (either may be
    /// absent when [`Self::needs_passwd`] or [`Self::needs_group`] says it is not needed). A
    /// uid without an entry gets group 0, as the engine does.
    pub fn resolve(&self, passwd: Option<&str>, group: Option<&str>) -> Result<Owner> {
        if self.user.is_empty() {
            return Ok(Owner::ROOT);
        }
        let entry = passwd.and_then(|p| {
            entries(p).find(|fields| match self.user.parse::<u64>() {
                Ok(uid) => fields.get(2).and_then(|f| f.parse::<u64>().ok()) == Some(uid),
                Err(_) => fields.first() == Some(&self.user),
            })
        });
        let (uid, default_gid) = match (self.user.parse::<u64>(), entry) {
            (Ok(uid), entry) => (
                uid,
                entry.and_then(|f| f.get(3).and_then(|g| g.parse().ok())),
            ),
            (Err(_), Some(fields)) => {
                let id = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
                match (id(2), id(3)) {
                    (Some(uid), gid) => (uid, gid),
                    (None, _) => {
                        return Err(Error::conflict(format!(
                            "user {:?} has a malformed entry in the sandbox's /etc/passwd",
                            self.user
                        )));
                    }
                }
            }
            (Err(_), None) => {
                return Err(Error::conflict(format!(
                    "user {:?} (the template's remoteUser or containerUser) is not in the \
                     sandbox's /etc/passwd, so the file API cannot give it a file",
                    self.user
                )));
            }
        };
        let gid = match self.group {
            None => default_gid.unwrap_or(0),
            Some(g) => match g.parse::<u64>() {
                Ok(gid) => gid,
                Err(_) => group
                    .and_then(|text| {
                        entries(text)
                            .find(|fields| fields.first() == Some(&g))
                            .and_then(|fields| fields.get(2).and_then(|f| f.parse().ok()))
                    })
                    .ok_or_else(|| {
                        Error::conflict(format!(
                            "group {g:?} of user spec {:?} is not in the sandbox's /etc/group",
                            self.user
                        ))
                    })?,
            },
        };
        Ok(Owner { uid, gid })
    }
}

/// The colon-separated fields of each entry of a `passwd` or `group` file, comments and
/// blank lines skipped.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        \n\
        vscode:x:1000:1000:vscode:/home/vscode:/bin/bash\n\
        svc:x:1001:50::/:/bin/false\n\
        broken:x:abc:1\n";
    const GROUP: &str = "root:x:0:\nvscode:x:1000:\nstaff:x:50:svc\n";

    fn resolve(spec: &str) -> Result<Owner> {
        UserSpec::parse(spec).resolve(Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_and_ids_resolve_as_the_engine_resolves_them() {
        assert_eq!(resolve("").unwrap(), Owner::ROOT);
        assert_eq!(resolve("root").unwrap(), Owner::ROOT);
        assert_eq!(
            resolve("vscode").unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            resolve("1000").unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(resolve("svc").unwrap(), Owner { uid: 1001, gid: 50 });
        assert_eq!(
            resolve("vscode:staff").unwrap(),
            Owner { uid: 1000, gid: 50 }
        );
        assert_eq!(resolve("1000:7").unwrap(), Owner { uid: 1000, gid: 7 });
        // A uid nobody has: group 0, like `docker exec -u 4242`.
        assert_eq!(resolve("4242").unwrap(), Owner { uid: 4242, gid: 0 });
    }

    #[test]
    fn unknown_names_are_a_conflict_naming_them() {
        for (spec, named) in [
            ("nobody-here", "nobody-here"),
            ("vscode:nogroup", "nogroup"),
        ] {
            match resolve(spec) {
                Err(Error::Conflict(m)) => assert!(m.contains(named), "{m}"),
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(matches!(resolve("broken"), Err(Error::Conflict(m)) if m.contains("malformed")));
        assert!(UserSpec::parse("vscode").resolve(None, None).is_err());
    }

    #[test]
    fn only_what_is_needed_is_read() {
        let needs = |s: &str| {
            let spec = UserSpec::parse(s);
            (spec.needs_passwd(), spec.needs_group())
        };
        assert_eq!(needs(""), (false, false));
        assert_eq!(needs("1000:1000"), (false, false));
        assert_eq!(needs("1000"), (true, false));
        assert_eq!(needs("vscode"), (true, false));
        assert_eq!(needs("1000:staff"), (false, true));
        assert_eq!(needs("vscode:staff"), (true, true));
    }
}
