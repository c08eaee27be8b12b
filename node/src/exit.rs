//! Exit codes of the client commands (`send`, `call`, `ping`), one per cause; README.md lists
//! them. 0 is success; clap's usage errors exit with 2 like [`INPUT`].

use ferry::{CallError, DialError, OpenError, PingError, SendError};

/// Any other failure: the local node could not start, a protocol violation, an undecodable reply.
pub(crate) const FAILURE: u8 = 1;
/// Malformed address, target, peer or input (also a bad config file of `run`/`listen`).
pub(crate) const INPUT: u8 = 2;
/// The address is forged, expired, or names another node than the one that answered.
pub(crate) const BAD_ADDRESS: u8 = 3;
/// No such mailbox (unknown or closed) or no such service.
pub(crate) const NOT_FOUND: u8 = 4;
/// The node could not be reached (dial failed, or it refused this node).
pub(crate) const UNREACHABLE: u8 = 5;
/// No acknowledgement, reply or echo in time.
pub(crate) const TIMEOUT: u8 = 6;
/// The message or request is larger than the limit.
pub(crate) const TOO_LARGE: u8 = 7;
/// The service failed the call, or ended it without a reply.
pub(crate) const CALL_FAILED: u8 = 8;
/// The service refused: it does not allow this node, or it is busy.
pub(crate) const REFUSED: u8 = 9;

/// `ferry send`.
pub(crate) fn send(error: &SendError) -> u8 {
    match error {
        SendError::Forged | SendError::Expired(_) | SendError::WrongNode => BAD_ADDRESS,
        SendError::NoSuchMailbox => NOT_FOUND,
        SendError::Unreachable(DialError::Timeout) | SendError::Timeout => TIMEOUT,
        SendError::Unreachable(_) => UNREACHABLE,
        SendError::TooLarge { .. } => TOO_LARGE,
        SendError::Revoked | SendError::Caveat(_) | SendError::Exhausted => REFUSED,
        _ => FAILURE,
    }
}

/// `ferry call`.
pub(crate) fn call(error: &CallError) -> u8 {
    match error {
        CallError::Open(open) => match open {
            OpenError::Unreachable(DialError::Timeout) | OpenError::Timeout => TIMEOUT,
            OpenError::Unreachable(_) => UNREACHABLE,
            OpenError::NoSuchService(_) | OpenError::NoSuchMailbox => NOT_FOUND,
            OpenError::NotAllowed | OpenError::Busy => REFUSED,
            OpenError::Revoked | OpenError::Caveat(_) | OpenError::Exhausted => REFUSED,
            OpenError::PeerShuttingDown => UNREACHABLE,
            OpenError::InvalidName(_) => INPUT,
            OpenError::Forged | OpenError::Expired(_) | OpenError::WrongNode => BAD_ADDRESS,
            OpenError::Failed(_) => CALL_FAILED,
            _ => FAILURE,
        },
        CallError::Timeout => TIMEOUT,
        CallError::Failed { .. } | CallError::NoResponse => CALL_FAILED,
        CallError::Encode(_) | CallError::TooLarge { .. } => TOO_LARGE,
        _ => FAILURE,
    }
}

/// `ferry ping`, for the last failure when no round got an echo.
pub(crate) fn ping(error: &PingError) -> u8 {
    match error {
        PingError::Unreachable(DialError::Timeout) | PingError::Timeout => TIMEOUT,
        PingError::Unreachable(_) => UNREACHABLE,
        PingError::Unsupported => NOT_FOUND,
        PingError::Refused { .. } | PingError::Reset(_) => REFUSED,
        PingError::ConnectionLost(_) => UNREACHABLE,
        _ => FAILURE,
    }
}
