//! Outputs: alert delivery ([`notify`], e-mail in [`mail`]), the status document and file ([`status`]), the HTML
//! status page ([`page`]), and the HTTP endpoints of `watch --listen` ([`serve`]).

pub mod mail;
pub mod notify;
pub mod page;
pub mod serve;
pub mod status;
