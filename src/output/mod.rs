//! Outputs: alert delivery ([`notify`]), the status document and file ([`status`]), the HTML
//! status page ([`page`]), and the HTTP endpoints of `watch --listen` ([`serve`]).

pub mod notify;
pub mod page;
pub mod serve;
pub mod status;
