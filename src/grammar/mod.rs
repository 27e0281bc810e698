//! The text formats' line grammars (nom): Python `logging` lines and tracebacks ([`pylog`]),
//! Ultralytics' console rows ([`ultralytics`]). Below both of their users: assembly recognises
//! a traceback's head and a progress frame with them, parsing reads the values.

pub mod pylog;
pub mod ultralytics;
