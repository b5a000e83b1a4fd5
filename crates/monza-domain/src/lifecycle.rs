//! The lifecycle as data: one enum of events and one pure function that decides every
//! status change. Stores apply the result conditionally ("only if the row is still in the
//! state I read"), so a race between two writers is a conflict, never a lost update.

use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::error::Error;
use crate::sandbox::{Sandbox, SandboxStatus};

/// Something that happens to a sandbox and may change its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    /// The container started and its create commands succeeded.
    Start,
    /// Creating the container failed, or its container vanished.
    Fail,
    /// The reaper found it idle past `expires_at`.
    Expire,
    /// A client deleted it.
    Delete,
    /// A heartbeat, execute, upload or download.
    Activity,
}

impl LifecycleEvent {
    /// Every event.
    pub const ALL: [LifecycleEvent; 5] = [
        Self::Start,
        Self::Fail,
        Self::Expire,
        Self::Delete,
        Self::Activity,
    ];

    fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Fail => "mark as failed",
            Self::Expire => "expire",
            Self::Delete => "delete",
            Self::Activity => "use",
        }
    }
}

/// An event that the sandbox's current status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionError {
    /// The status the sandbox is in.
    pub from: SandboxStatus,
    /// What was attempted.
    pub event: LifecycleEvent,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} a sandbox that is {}",
            self.event.verb(),
            self.from
        )
    }
}

impl std::error::Error for TransitionError {}

impl From<TransitionError> for Error {
    fn from(e: TransitionError) -> Self {
        Error::Conflict(e.to_string())
    }
}

/// The one rule for every status change.
///
/// | from \ event | Start   | Fail  | Expire  | Delete  | Activity |
/// |--------------|---------|-------|---------|---------|----------|
/// | creating     | running | error | -       | deleted | -        |
/// | running      | -       | error | expired | deleted | running  |
/// | error        | -       | -     | -       | deleted | -        |
/// | expired      | -       | -     | -       | -       | -        |
/// | deleted      | -       | -     | -       | -       | -        |
pub fn transition(
    from: SandboxStatus,
    event: LifecycleEvent,
) -> Result<SandboxStatus, TransitionError> {
    use LifecycleEvent as E;
    use SandboxStatus as S;
    match (from, event) {
        (S::Creating, E::Start) => Ok(S::Running),
        (S::Creating | S::Running, E::Fail) => Ok(S::Error),
        (S::Running, E::Expire) => Ok(S::Expired),
        (S::Creating | S::Running | S::Error, E::Delete) => Ok(S::Deleted),
        (S::Running, E::Activity) => Ok(S::Running),
        _ => Err(TransitionError { from, event }),
    }
}

/// The status an event leads to when it is allowed (each event has exactly one).
pub fn target(event: LifecycleEvent) -> SandboxStatus {
    match event {
        LifecycleEvent::Start | LifecycleEvent::Activity => SandboxStatus::Running,
        LifecycleEvent::Fail => SandboxStatus::Error,
        LifecycleEvent::Expire => SandboxStatus::Expired,
        LifecycleEvent::Delete => SandboxStatus::Deleted,
    }
}

/// Checks `event` against a sandbox's current status; the refusal is a conflict that names
/// the sandbox, its status and, for a failed one, the reason.
pub fn check(sandbox: &Sandbox, event: LifecycleEvent) -> Result<SandboxStatus, Error> {
    transition(sandbox.status(), event).map_err(|refused| {
        let reason = sandbox
            .status_reason()
            .filter(|_| sandbox.status() == SandboxStatus::Error)
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        Error::Conflict(format!("sandbox {}: {refused}{reason}", sandbox.id))
    })
}

/// The statuses from which `event` is allowed: what a store's conditional update checks.
pub fn allowed_from(event: LifecycleEvent) -> Vec<SandboxStatus> {
    SandboxStatus::ALL
        .into_iter()
        .filter(|from| transition(*from, event).is_ok())
        .collect()
}

/// `expires_at = last_activity + ttl`, the invariant every stored sandbox keeps.
pub fn expires_at(last_activity: OffsetDateTime, ttl: Duration) -> OffsetDateTime {
    last_activity + ttl
}

/// The one status the reaper expires sandboxes from (what [`allowed_from`] says of
/// [`LifecycleEvent::Expire`]; a test holds the two together).
pub const REAPABLE: SandboxStatus = SandboxStatus::Running;

/// Why a reaped sandbox ended, kept as its `status_reason`.
pub const EXPIRY_REASON: &str = "expired: idle past its time to live";

/// Whether the reaper may remove a sandbox now: [`REAPABLE`] and past its expiry
/// (`expires_at <= now`). Stores apply this rule as the indexed condition of
/// `SandboxRepository::claim_expired`, with the statuses an `ExpiryClaim` carries.
pub fn is_expired(status: SandboxStatus, expires_at: OffsetDateTime, now: OffsetDateTime) -> bool {
    status == REAPABLE && expires_at <= now
}

/// Whether a `creating` sandbox's creator is gone: it wrote a lease and stopped renewing
/// it, so the lease lapsed (`expires_at <= now`). Nobody is creating such a sandbox any more:
/// it may be settled at once. A sandbox without a lease never lapses (see
/// [`create_timed_out`]).
pub fn lease_lapsed(sandbox: &Sandbox, now: OffsetDateTime) -> bool {
    sandbox.status() == SandboxStatus::Creating
        && sandbox
            .create_lease()
            .is_some_and(|lease| lease.expires_at <= now)
}

/// Whether a `creating` sandbox that carries no lease (written by an older monza) has been
/// creating for longer than `timeout`: the backstop for creates no process vouches for. A
/// leased sandbox is never timed out: its lease says whether its creator still works on it.
pub fn create_timed_out(sandbox: &Sandbox, now: OffsetDateTime, timeout: Duration) -> bool {
    sandbox.status() == SandboxStatus::Creating
        && sandbox.create_lease().is_none()
        && now - sandbox.created_at > timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleEvent as E;
    use SandboxStatus as S;

    /// The whole table, written out once more by hand: every (state, event) pair.
    const TABLE: [(SandboxStatus, LifecycleEvent, Option<SandboxStatus>); 25] = [
        (S::Creating, E::Start, Some(S::Running)),
        (S::Creating, E::Fail, Some(S::Error)),
        (S::Creating, E::Expire, None),
        (S::Creating, E::Delete, Some(S::Deleted)),
        (S::Creating, E::Activity, None),
        (S::Running, E::Start, None),
        (S::Running, E::Fail, Some(S::Error)),
        (S::Running, E::Expire, Some(S::Expired)),
        (S::Running, E::Delete, Some(S::Deleted)),
        (S::Running, E::Activity, Some(S::Running)),
        (S::Error, E::Start, None),
        (S::Error, E::Fail, None),
        (S::Error, E::Expire, None),
        (S::Error, E::Delete, Some(S::Deleted)),
        (S::Error, E::Activity, None),
        (S::Expired, E::Start, None),
        (S::Expired, E::Fail, None),
        (S::Expired, E::Expire, None),
        (S::Expired, E::Delete, None),
        (S::Expired, E::Activity, None),
        (S::Deleted, E::Start, None),
        (S::Deleted, E::Fail, None),
        (S::Deleted, E::Expire, None),
        (S::Deleted, E::Delete, None),
        (S::Deleted, E::Activity, None),
    ];

    #[test]
    fn every_pair_follows_the_table() {
        for (from, event, expected) in TABLE {
            let got = transition(from, event).ok();
            assert_eq!(got, expected, "{from} + {event:?}");
        }
    }

    #[test]
    fn the_table_covers_every_pair() {
        for from in SandboxStatus::ALL {
            for event in LifecycleEvent::ALL {
                assert!(
                    TABLE.iter().any(|(f, e, _)| *f == from && *e == event),
                    "{from} + {event:?} missing from the table"
                );
            }
        }
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for from in [S::Expired, S::Deleted] {
            assert!(from.is_terminal());
            for event in LifecycleEvent::ALL {
                assert!(transition(from, event).is_err(), "{from} + {event:?}");
            }
        }
        for from in [S::Creating, S::Running, S::Error] {
            assert!(!from.is_terminal());
        }
    }

    #[test]
    fn an_illegal_transition_is_a_conflict_naming_the_state() {
        let err: Error = transition(S::Expired, E::Activity).unwrap_err().into();
        assert_eq!(
            err,
            Error::Conflict("cannot use a sandbox that is expired".into())
        );
    }

    #[test]
    fn every_allowed_transition_reaches_the_events_target() {
        for (from, event, expected) in TABLE {
            if let Some(to) = expected {
                assert_eq!(to, target(event), "{from} + {event:?}");
            }
        }
    }

    #[test]
    fn the_reaper_expires_exactly_what_the_table_allows() {
        assert_eq!(allowed_from(E::Expire), vec![REAPABLE]);
        assert_eq!(target(E::Expire), S::Expired);
    }

    #[test]
    fn allowed_from_lists_the_sources() {
        assert_eq!(allowed_from(E::Activity), vec![S::Running]);
        assert_eq!(
            allowed_from(E::Delete),
            vec![S::Creating, S::Running, S::Error]
        );
        assert_eq!(allowed_from(E::Fail), vec![S::Creating, S::Running]);
    }

    fn creating(lease: Option<OffsetDateTime>) -> Sandbox {
        let t = time::macros::datetime!(2026-01-01 12:00 UTC);
        Sandbox {
            id: crate::sandbox::SandboxId::new_random(),
            tenant: crate::sandbox::TenantId::default_tenant(),
            name: crate::sandbox::SandboxName::new("s").unwrap(),
            template: crate::sandbox::TemplateName::trusted("go"),
            state: crate::sandbox::SandboxState::creating(lease.map(|expires_at| {
                crate::sandbox::CreateLease {
                    instance: crate::sandbox::InstanceId::new_random(),
                    expires_at,
                }
            })),
            container_id: None,
            image: String::new(),
            workspace_mount: "/workspace".into(),
            devcontainer_config: serde_json::json!({}),
            env_vars: Default::default(),
            remote_env: Default::default(),
            remote_user: None,
            port_mappings: vec![],
            last_activity: t,
            created_at: t,
            expires_at: t + Duration::minutes(15),
        }
    }

    #[test]
    fn a_lease_lapses_at_its_expiry_and_only_while_creating() {
        let t = time::macros::datetime!(2026-01-01 12:00:15 UTC);
        let leased = creating(Some(t));
        assert!(!lease_lapsed(&leased, t - Duration::milliseconds(1)));
        assert!(lease_lapsed(&leased, t));
        assert!(lease_lapsed(&leased, t + Duration::hours(1)));
        let started = leased.state.after(E::Start, t, None).unwrap();
        let moved_on = [
            leased
                .state
                .after(E::Fail, t, Some("failed".into()))
                .unwrap(),
            leased.state.after(E::Delete, t, None).unwrap(),
            started.after(E::Expire, t, None).unwrap(),
            started,
        ];
        for state in moved_on {
            let other = Sandbox {
                state,
                ..leased.clone()
            };
            assert_eq!(other.create_lease(), None, "{}", other.status());
            assert!(
                !lease_lapsed(&other, t + Duration::hours(1)),
                "{}",
                other.status()
            );
        }
        for status in [S::Running, S::Error, S::Deleted, S::Expired] {
            let kept =
                crate::sandbox::SandboxState::restore(status, None, None, leased.create_lease());
            assert!(kept.is_err(), "a {status} sandbox kept its create lease");
        }
        assert!(
            !lease_lapsed(&creating(None), t + Duration::days(1)),
            "no lease, nothing to lapse"
        );
    }

    #[test]
    fn only_a_create_without_a_lease_times_out() {
        let unleased = creating(None);
        let timeout = Duration::minutes(10);
        let at = unleased.created_at + timeout;
        assert!(!create_timed_out(&unleased, at, timeout));
        assert!(create_timed_out(
            &unleased,
            at + Duration::microseconds(1),
            timeout
        ));
        let leased = creating(Some(unleased.created_at + Duration::days(1)));
        assert!(
            !create_timed_out(&leased, at + Duration::hours(1), timeout),
            "a renewed lease keeps a long create alive"
        );
        let mut running = unleased;
        running.state = running.state.after(E::Start, at, None).unwrap();
        assert!(!create_timed_out(
            &running,
            at + Duration::hours(1),
            timeout
        ));
    }

    #[test]
    fn expiry_is_last_activity_plus_ttl() {
        let t = time::macros::datetime!(2026-01-01 12:00 UTC);
        assert_eq!(
            expires_at(t, Duration::minutes(15)),
            time::macros::datetime!(2026-01-01 12:15 UTC)
        );
        assert!(!is_expired(S::Running, t, t - Duration::seconds(1)));
        assert!(is_expired(S::Running, t, t));
        assert!(!is_expired(S::Error, t, t + Duration::hours(1)));
        assert!(!is_expired(S::Creating, t, t + Duration::hours(1)));
    }
}
