//! Python `logging` text lines, in the two formats the annotation queue and training wrappers
//! use: `%(asctime)s - %(name)s - %(levelname)s - %(message)s` and `logging.BASIC_FORMAT`
//! (`%(levelname)s:%(name)s:%(message)s`). `asctime` is `YYYY-MM-DD HH:MM:SS,mmm` or, with a
//! custom `datefmt`, without milliseconds. Also glog's layout, which PyTorch's distributed
//! launcher (torch elastic) writes: `W0328 18:18:18.154000 140217767576768 file.py:851] msg`.

use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::{tag, take_while_m_n, take_while1},
    combinator::{opt, recognize, rest},
    sequence::preceded,
};

use crate::event::Level;

/// One logging record's first line.
#[derive(Clone, Debug, PartialEq)]
pub struct PyLog<'a> {
    /// The `asctime` text, read into a time by [`PyLog::ts`] only when wanted (grouping
    /// looks at every line and needs none).
    pub time: Option<&'a str>,
    pub logger: &'a str,
    pub level: Level,
    pub message: &'a str,
}

type R<'a, T> = IResult<&'a str, T>;

fn level_name(i: &str) -> R<'_, Level> {
    let (i, name) = alt((
        tag("DEBUG"),
        tag("INFO"),
        tag("WARNING"),
        tag("WARN"),
        tag("ERROR"),
        tag("CRITICAL"),
        tag("FATAL"),
    ))
    .parse(i)?;
    Ok((i, Level::parse(name).unwrap_or(Level::Info)))
}

/// `hh:mm:ss`
fn clock(i: &str) -> R<'_, &str> {
    let d = || take_while_m_n(2, 2, |c: char| c.is_ascii_digit());
    recognize((d(), tag(":"), d(), tag(":"), d())).parse(i)
}

/// `2026-11-29 05:00:48,263` or `2026-11-29 05:00:48`
fn asctime(i: &str) -> R<'_, &str> {
    let d = |n| take_while_m_n(n, n, |c: char| c.is_ascii_digit());
    recognize((
        d(4),
        tag("-"),
        d(2),
        tag("-"),
        d(2),
        tag(" "),
        clock,
        opt(preceded(
            alt((tag(","), tag("."))),
            take_while_m_n(1, 9, |c: char| c.is_ascii_digit()),
        )),
    ))
    .parse(i)
}

/// Whether a line is a Python exception's own line, `[module.]NameError: message` at the
/// start of the line (the last line of a traceback, or one printed without its traceback).
pub fn is_exception_line(line: &str) -> bool {
    let name: R<'_, &str> =
        take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.').parse(line);
    match name {
        Ok((rest, name)) => {
            !name.starts_with('.')
                && (name.ends_with("Error") || name.ends_with("Exception"))
                && (rest.is_empty() || rest.starts_with(": "))
        }
        Err(_) => false,
    }
}

/// The first ` - ` in `s` (memchr for the dash: `str::find` sets up a two-way search on
/// every call, which costs more than the search on these short lines).
fn find_dash(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'-', b)
        .find(|&i| i > 0 && b[i - 1] == b' ' && b.get(i + 1) == Some(&b' '))
        .map(|i| i - 1)
}

/// `asctime - name - LEVEL - message`. The logger name may itself contain ` - `, so the level
/// is the first ` - LEVEL - ` after the time.
fn dashed(i: &str) -> R<'_, PyLog<'_>> {
    let (rest, (ts, _)) = (asctime, tag(" - ")).parse(i)?;
    let mut from = 0;
    while let Some(pos) = find_dash(&rest[from..]) {
        let at = from + pos;
        let after = &rest[at + 3..];
        let level: R<'_, (Level, &str)> = (level_name, alt((tag(" - "), tag(" -")))).parse(after);
        if let Ok((message, (level, _))) = level
            && at > 0
        {
            let logger = &rest[..at];
            return Ok((
                "",
                PyLog {
                    time: Some(ts),
                    logger,
                    level,
                    message,
                },
            ));
        }
        from = at + 3;
    }
    Err(nom::Err::Error(nom::error::Error::new(
        i,
        nom::error::ErrorKind::Tag,
    )))
}

/// Other common layouts after a leading time: `asctime [LEVEL] name: message`,
/// `asctime LEVEL name: message`, loguru's `asctime | LEVEL    | module:func:12 - message`.
/// The level is the first level word within the next 40 bytes; the message is what
/// follows it (the logger name is not separated out).
fn leveled(i: &str) -> R<'_, PyLog<'_>> {
    let (rest, ts) = asctime(i)?;
    let window = &rest[..rest.floor_char_boundary(40)];
    let b = window.as_bytes();
    for (at, _) in window.char_indices() {
        if at > 0 && b[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let level: R<'_, Level> = level_name(&rest[at..]);
        if let Ok((after, level)) = level {
            if after
                .as_bytes()
                .first()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            {
                continue;
            }
            let message = after.trim_start_matches([']', '|', ':', ' ', '-']);
            return Ok((
                "",
                PyLog {
                    time: Some(ts),
                    logger: "",
                    level,
                    message,
                },
            ));
        }
    }
    Err(nom::Err::Error(nom::error::Error::new(
        i,
        nom::error::ErrorKind::Tag,
    )))
}

/// `LEVEL:name:message`
fn basic(i: &str) -> R<'_, PyLog<'_>> {
    let (i, (level, _, logger, _, message)) = (
        level_name,
        tag(":"),
        take_while1(|c: char| c != ':' && !c.is_whitespace()),
        tag(":"),
        rest,
    )
        .parse(i)?;
    Ok((
        i,
        PyLog {
            time: None,
            logger,
            level,
            message,
        },
    ))
}

/// glog / absl: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] message`, `L` one of `IWEF`
/// (PyTorch's distributed launcher). PyTorch's C++ warnings put the same in brackets, with
/// no thread id since 2.4 (`[W403 11:42:02.380967152 ProcessGroupNCCL.cpp:1250] Warning: ...`)
/// and with no time before (`[W reducer.cpp:1389] Warning: ...`). The date has no year, so
/// the time is not read (the line's own time stands).
fn glog(i: &str) -> R<'_, PyLog<'_>> {
    let digits = || take_while1(|c: char| c.is_ascii_digit());
    let spaces = || take_while1(|c: char| c == ' ');
    // `mmdd hh:mm:ss[.frac] `, the spaces after it included; PyTorch does not pad the month
    // (`W403` is April 3).
    let stamp = || {
        (
            take_while_m_n(3, 4, |c: char| c.is_ascii_digit()),
            tag(" "),
            clock,
            opt(preceded(tag("."), digits())),
            spaces(),
        )
    };
    let (i, bracket) = opt(tag("[")).parse(i)?;
    let (i, level) = alt((tag("I"), tag("W"), tag("E"), tag("F"))).parse(i)?;
    // glog's own lines always have the thread id; PyTorch's bracketed ones may lack it, or
    // the whole stamp.
    let (i, _) = if bracket.is_some() {
        alt((recognize((stamp(), opt((digits(), spaces())))), spaces())).parse(i)?
    } else {
        recognize((stamp(), digits(), spaces())).parse(i)?
    };
    let (i, (logger, _)) = (take_while1(|c: char| c != ']' && c != ' '), tag("]")).parse(i)?;
    // `file:line`
    let is_site = logger.rsplit_once(':').is_some_and(|(f, n)| {
        !f.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    });
    if !is_site {
        return Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Verify,
        )));
    }
    let level = match level {
        "I" => Level::Info,
        "W" => Level::Warning,
        "E" => Level::Error,
        _ => Level::Critical,
    };
    let message = i.strip_prefix(' ').unwrap_or(i);
    Ok((
        "",
        PyLog {
            time: None,
            logger,
            level,
            message,
        },
    ))
}

impl PyLog<'_> {
    /// The record's time (ns since the epoch), from its `asctime`.
    pub fn ts(&self) -> Option<i64> {
        self.time.and_then(crate::time::parse_loose)
    }
}

/// Parses a logging record's first line, or `None` when the line is not one.
pub fn parse(line: &str) -> Option<PyLog<'_>> {
    let first = line.as_bytes().first()?;
    let r = if first.is_ascii_digit() {
        dashed(line).or_else(|_| leveled(line))
    } else if first.is_ascii_uppercase() {
        basic(line).or_else(|_| glog(line))
    } else if *first == b'[' {
        glog(line)
    } else {
        return None;
    };
    r.ok().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_lines() {
        for l in [
            "RuntimeError: Training failed: NaN persisted for 4 epochs",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.",
            "KeyError: 'bbox'",
            "pika.exceptions.AMQPConnectionError",
        ] {
            assert!(is_exception_line(l), "{l}");
        }
        for l in [
            "rstream.exceptions.StreamDoesNotExist: stream annotations",
            "  File \"x.py\", line 1, in <module>",
            "    raise RuntimeError: x",
            "No Error: fine",
            "Errors: 0",
            "MyError:no space",
            "",
        ] {
            assert!(!is_exception_line(l), "{l}");
        }
    }

    #[test]
    fn find_dash_is_str_find() {
        for s in [
            "a - b",
            "a -b - c",
            "- x - y",
            "a-b",
            "x -",
            " - ",
            "é - è",
            "a--b - -c",
        ] {
            assert_eq!(find_dash(s), s.find(" - "), "{s:?}");
        }
    }

    #[test]
    fn dashed_format() {
        let p = parse("2026-11-29 05:00:48,263 - consumer - INFO - Processed 10 messages").unwrap();
        assert_eq!(p.logger, "consumer");
        assert_eq!(p.level, Level::Info);
        assert_eq!(p.message, "Processed 10 messages");
        assert_eq!(p.ts(), crate::time::parse_loose("2026-11-29T05:00:48.263Z"));
        let p = parse("2026-04-22 15:39:47 - exp01_detection_baseline - INFO - ").unwrap();
        assert_eq!(p.message, "");
        let p = parse("2026-04-22 15:39:47 - a - b - ERROR - x - y").unwrap();
        assert_eq!(p.logger, "a - b");
        assert_eq!(p.message, "x - y");
    }

    #[test]
    fn glog_format() {
        let p = parse("W0328 18:18:18.154000 140217767576768 torch/distributed/elastic/multiprocessing/api.py:851] Sending process 3274844 closing signal SIGTERM").unwrap();
        assert_eq!(p.level, Level::Warning);
        assert_eq!(
            p.logger,
            "torch/distributed/elastic/multiprocessing/api.py:851"
        );
        assert_eq!(p.message, "Sending process 3274844 closing signal SIGTERM");
        assert_eq!(p.ts(), None);
        let p = parse("E0328 18:18:48.413000 140 api.py:826] failed (exitcode: 1)").unwrap();
        assert_eq!((p.level, p.message), (Level::Error, "failed (exitcode: 1)"));
        // glog pads the thread id; F is fatal.
        let p = parse("F1205 09:00:01.000001  4242 main.cc:10] Check failed: x").unwrap();
        assert_eq!((p.level, p.message), (Level::Critical, "Check failed: x"));
        assert_eq!(parse("I1205 09:00:01 7 a.py:1]").unwrap().message, "");
        // PyTorch's C++ warnings, since 2.4 and before.
        let p = parse("[W403 11:42:02.380967152 ProcessGroupNCCL.cpp:1250] Warning: WARNING: process group has NOT been destroyed").unwrap();
        assert_eq!(
            (p.level, p.logger, p.message),
            (
                Level::Warning,
                "ProcessGroupNCCL.cpp:1250",
                "Warning: WARNING: process group has NOT been destroyed"
            )
        );
        let p = parse("[W reducer.cpp:1389] Warning: find_unused_parameters=True").unwrap();
        assert_eq!((p.level, p.logger), (Level::Warning, "reducer.cpp:1389"));
        let p = parse("[E1205 09:00:01.5 77 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation timeout").unwrap();
        assert_eq!(p.level, Level::Error);
        for not in [
            "W0328 text",
            "E1234 12:00 1 a.py:1] x",
            "X0328 18:18:18.1 1 a.py:1] x",
            "W0328 18:18:18.1 a.py:1] x",
            "[W] x",
            "[INFO] x",
            "[W note] x",
            "[E reducer.cpp] x",
            "[rank0]: x",
        ] {
            assert!(parse(not).is_none(), "{not}");
        }
    }

    #[test]
    fn basic_format() {
        let p = parse("WARNING:annotation_queue:Failed to process message offset=1234").unwrap();
        assert_eq!(p.level, Level::Warning);
        assert_eq!(p.logger, "annotation_queue");
        assert_eq!(p.message, "Failed to process message offset=1234");
        assert!(parse("INFO:root:root info").is_some());
    }

    #[test]
    fn other_layouts_after_a_time() {
        let p =
            parse("2026-03-28 14:30:00,123 [ERROR] consumer: Failed to process message offset=7")
                .unwrap();
        assert_eq!(
            (p.level, p.message),
            (Level::Error, "consumer: Failed to process message offset=7")
        );
        let p = parse("2026-03-28 14:30:00 WARNING consumer: slow").unwrap();
        assert_eq!((p.level, p.message), (Level::Warning, "consumer: slow"));
        let p =
            parse("2026-03-28 14:30:00.123 | INFO     | app.queue:run:42 - Processed 3 messages")
                .unwrap();
        assert_eq!(
            (p.level, p.message),
            (Level::Info, "app.queue:run:42 - Processed 3 messages")
        );
        assert_eq!(p.ts(), crate::time::parse_loose("2026-03-28 14:30:00.123"));
        // A level word must stand alone.
        assert!(parse("2026-03-28 14:30:00 INFORMATIONAL text").is_none());
        // The 40-byte window for the level ends inside a 4-byte character (found by proptest).
        let line = format!("2026-03-28 14:30:00{} 🕴 WARNING x", ",".repeat(38));
        assert!(parse(&line).is_none());
        let line = format!("2026-03-28 14:30:00 ERROR {}🕴 boom", "é".repeat(16));
        let p = parse(&line).unwrap();
        assert_eq!(p.level, Level::Error);
        assert!(p.message.ends_with("🕴 boom"));
    }

    #[test]
    fn not_logging() {
        assert!(parse("Epoch 45/120").is_none());
        assert!(parse("ERROR ❌ AMP: checks failed").is_none());
        assert!(parse("2026 was a year").is_none());
        assert!(parse("").is_none());
    }
}
