//! Outputs: alert delivery ([`notify`]) and the status file ([`status`]).

pub mod notify;
pub mod status;
