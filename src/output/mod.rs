//! Outputs: alert delivery ([`notify`], e-mail in [`mail`]), the status document and file
//! ([`status`]), the HTML status page ([`page`]), the HTTP endpoints of `watch --listen`
//! ([`serve`]), training history as results.csv ([`results`]) and to an MLflow tracking server
//! ([`mlflow`]).

pub mod mail;
pub mod mlflow;
pub mod notify;
pub mod page;
pub mod results;
pub mod serve;
pub mod status;
