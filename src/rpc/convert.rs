//! pb ⇄ domain for the values every service shares, and `Error` ⇄ `Status`.

use tonic::{Code, Status};

use super::pb;
use crate::error::Error;
use crate::protocol::{Access, Epoch, FaultKind, PageName, Release, RELEASES_PER_MESSAGE};

/// Validates a page name received over the wire.
pub(super) fn page_name(name: &str) -> Result<PageName, Error> {
    PageName::new(name)
}

/// The fault kind of a wire mode; `MODE_UNSPECIFIED` or an unknown value is malformed.
pub(super) fn fault_kind(mode: i32) -> Result<FaultKind, Error> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Read) => Ok(FaultKind::Read),
        Ok(pb::Mode::Write) => Ok(FaultKind::Write),
        _ => Err(Error::Malformed(format!("mode {mode} is not read or write"))),
    }
}

/// The wire mode of a fault kind.
pub(super) fn mode(kind: FaultKind) -> i32 {
    match kind {
        FaultKind::Read => pb::Mode::Read.into(),
        FaultKind::Write => pb::Mode::Write.into(),
    }
}

/// The wire mode of the access a transfer gives.
pub(super) fn access_mode(access: Access) -> i32 {
    mode(if access == Access::Write { FaultKind::Write } else { FaultKind::Read })
}

/// An epoch received over the wire: epochs start at 1, and the largest `u64`
/// is refused so that the epoch after it always exists.
pub(super) fn epoch(epoch: u64) -> Result<Epoch, Error> {
    if epoch == 0 || epoch == u64::MAX {
        return Err(Error::Malformed(format!("epoch {epoch} is not a page epoch")));
    }
    Ok(epoch)
}

/// Releases received over the wire: at most [`RELEASES_PER_MESSAGE`], each a
/// valid page and epoch; one bad entry refuses them all.
pub(super) fn releases(list: Vec<pb::Released>) -> Result<Vec<Release>, Error> {
    if list.len() > RELEASES_PER_MESSAGE {
        let n = list.len();
        return Err(Error::Malformed(format!("{n} releases in one message (at most {RELEASES_PER_MESSAGE})")));
    }
    list.into_iter().map(|r| Ok(Release { page: page_name(&r.page)?, epoch: epoch(r.epoch)? })).collect()
}

/// The wire form of `releases`.
pub(super) fn released(releases: &[Release]) -> Vec<pb::Released> {
    releases.iter().map(|r| pb::Released { page: r.page.to_string(), epoch: r.epoch }).collect()
}

/// Longest lease a client accepts from a CM: a longer one is cut to it, so a
/// deadline computed from it cannot overflow.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A lease received over the wire, in ms, cut to [`MAX_LEASE`].
pub(super) fn lease(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms).min(MAX_LEASE)
}

/// A client id or request seq received over the wire: both start at 1.
pub(super) fn positive(what: &str, value: u64) -> Result<u64, Error> {
    if value == 0 {
        return Err(Error::Malformed(format!("{what} must be positive")));
    }
    Ok(value)
}

/// A `host:port` received over the wire.
pub(super) fn socket_addr(what: &str, addr: &str) -> Result<String, Error> {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::Malformed(format!("{what} {addr:?} is not host:port")));
    }
    Ok(addr.to_string())
}

/// The status that carries `err` to the caller.
pub fn status_from_error(err: &Error) -> Status {
    let code = match err {
        Error::BadPageName { .. } | Error::TooLarge { .. } | Error::Malformed(_) | Error::InvalidConfig(_) => {
            Code::InvalidArgument
        }
        Error::PageNotFound { .. } => Code::NotFound,
        Error::UnknownClient { .. } | Error::Evicted { .. } | Error::PageLost { .. } | Error::StaleRequest { .. } => {
            Code::FailedPrecondition
        }
        Error::NotLeader { .. } | Error::NoQuorum(_) | Error::Unavailable(_) => Code::Unavailable,
        Error::ClientUnreachable { .. } => Code::Unavailable,
        Error::EpochMoved { .. } | Error::NotHeld { .. } | Error::TransferLost { .. } => Code::Aborted,
        Error::Storage(_) | Error::DataDirInUse { .. } | Error::Internal(_) => Code::Internal,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::TooManyClients { .. } | Error::TooManyPages { .. } => Code::ResourceExhausted,
        Error::RegionPoisoned { .. } => Code::DataLoss,
        Error::SvmUnavailable(_) => Code::Unimplemented,
    };
    let details = serde_json::to_vec(err).unwrap_or_default();
    Status::with_details(code, err.to_string(), details.into())
}

/// The error a status carries; a status from elsewhere (transport, deadline) is
/// mapped by its code, naming `peer`.
pub fn error_from_status(status: &Status, peer: &str) -> Error {
    if let Ok(err) = serde_json::from_slice::<Error>(status.details()) {
        return err;
    }
    let what = format!("{peer}: {}", status.message());
    match status.code() {
        Code::InvalidArgument => Error::Malformed(what),
        Code::DeadlineExceeded | Code::Cancelled => {
            Error::Unavailable(format!("{peer}: no answer within the deadline"))
        }
        Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(what),
        _ => Error::Unavailable(what),
    }
}

/// Runs a fallible conversion or handler result into a tonic reply.
pub(super) fn reply<T>(result: Result<T, Error>) -> Result<tonic::Response<T>, Status> {
    result.map(tonic::Response::new).map_err(|e| status_from_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        let errs = [
            Error::NotLeader { leader: Some((2, "127.0.0.1:7102".into())) },
            Error::PageNotFound { page: "P9".into() },
            Error::ClientUnreachable {
                client: 3,
                addr: "127.0.0.1:1".into(),
                reason: "refused".into(),
                evict_in_ms: Some(1200),
            },
            Error::DataDirInUse { path: "data/cm-1".into() },
        ];
        for err in errs {
            let status = status_from_error(&err);
            assert_eq!(error_from_status(&status, "cm"), err);
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn foreign_status_names_peer() {
        let status = Status::deadline_exceeded("timeout");
        let err = error_from_status(&status, "CM 127.0.0.1:7101");
        assert!(err.to_string().contains("CM 127.0.0.1:7101"), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn bad_values_are_malformed() {
        assert!(matches!(fault_kind(0), Err(Error::Malformed(_))));
        assert!(matches!(fault_kind(99), Err(Error::Malformed(_))));
        assert_eq!(fault_kind(2).unwrap(), FaultKind::Write);
        assert!(matches!(epoch(0), Err(Error::Malformed(_))));
        assert!(matches!(socket_addr("client address", "nowhere"), Err(Error::Malformed(_))));
    }
}
