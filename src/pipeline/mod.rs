//! The pipeline: sources -> assemble -> parse -> derive -> store, wired together. One ingest
//! driver ([`ingest`]) takes the lines of both inputs: archived files ([`replay`](mod@replay)) and the
//! Docker source's live streams ([`live`]).

mod folders;
pub mod import;
pub mod ingest;
pub mod live;
pub mod replay;

pub use import::{ImportSummary, import};
pub use ingest::{BATCH_OPS, Counts, Ingest};
pub use replay::{Folders, ReplayError, Summary, replay, replay_with};
