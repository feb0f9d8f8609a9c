//! pb ⇄ domain conversions and Error ⇄ Status, done once, here.

use tonic::{Code, Status};

use super::pb;
use crate::error::Error;
use crate::protocol::{FaultKind, PageName};

/// Validates a page name received over the wire.
#[allow(clippy::result_large_err)]
pub fn page_name(name: &str) -> Result<PageName, Status> {
    PageName::new(name).map_err(|e| status_from_error(&e))
}

/// The fault kind of a wire mode; `MODE_UNSPECIFIED` or an unknown value is malformed.
#[allow(clippy::result_large_err)]
pub fn fault_kind(mode: i32) -> Result<FaultKind, Status> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Read) => Ok(FaultKind::Read),
        Ok(pb::Mode::Write) => Ok(FaultKind::Write),
        _ => Err(status_from_error(&Error::Malformed(format!("mode {mode} is not read or write")))),
    }
}

/// The wire mode of a fault kind.
pub fn mode(kind: FaultKind) -> pb::Mode {
    match kind {
        FaultKind::Read => pb::Mode::Read,
        FaultKind::Write => pb::Mode::Write,
    }
}

/// The status that carries `err` to the caller.
pub fn status_from_error(err: &Error) -> Status {
    let code = match err {
        Error::BadPageName { .. } | Error::TooLarge { .. } | Error::Malformed(_) => Code::InvalidArgument,
        Error::PageNotFound { .. } => Code::NotFound,
        Error::UnknownClient { .. } | Error::OwnerGone { .. } | Error::StaleRequest { .. } => Code::FailedPrecondition,
        Error::NotLeader { .. } | Error::NoQuorum(_) | Error::Unavailable(_) => Code::Unavailable,
        Error::ClientUnreachable { .. } => Code::Unavailable,
        Error::EpochMoved { .. } | Error::NotHeld { .. } | Error::TransferLost { .. } => Code::Aborted,
        Error::Storage(_) => Code::Internal,
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
        Code::DeadlineExceeded => Error::Unavailable(format!("{peer}: no answer within the deadline")),
        _ => Error::Unavailable(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        let errs = [
            Error::NotLeader { leader: Some((2, "127.0.0.1:7102".into())) },
            Error::PageNotFound { page: "P9".into() },
            Error::ClientUnreachable { client: 3, addr: "127.0.0.1:1".into(), reason: "refused".into() },
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
    fn bad_mode_is_malformed() {
        assert_eq!(fault_kind(0).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(fault_kind(99).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(fault_kind(2).unwrap(), FaultKind::Write);
    }
}
