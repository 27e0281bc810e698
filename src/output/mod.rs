//! Outputs: alert delivery ([`notify`] to the [`receivers`], e-mail in [`mail`]), the status
//! document ([`status`]), the HTML status page ([`page`]), both kept on disk ([`files`]), the
//! HTTP endpoints of `watch --listen` ([`serve`]) and who holds their connections ([`conns`]),
//! training history as results.csv ([`results`]) and to an MLflow tracking server
//! ([`mlflow`]).

pub mod conns;
pub mod files;
pub mod mail;
pub mod mlflow;
pub mod notify;
pub mod page;
pub mod receivers;
pub mod results;
pub mod serve;
pub mod status;
