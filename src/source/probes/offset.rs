//! The queue offset probe: the annotation queue's `offset.yaml`. Its exact layout is not
//! public, so any of these is read: a bare number, `offset: 1234`, or a mapping with an
//! `offset`-named key at any depth (`stream: {offset: 1234}`, `last_offset: 1234`); the first
//! such integer in document order wins.

use yaml_rust2::{Yaml, YamlLoader};

/// The offset stated by a YAML document, if any.
pub fn parse(text: &str) -> Option<i64> {
    let docs = YamlLoader::load_from_str(text).ok()?;
    let doc = docs.first()?;
    match doc {
        Yaml::Integer(n) => Some(*n),
        _ => find(doc),
    }
}

fn find(y: &Yaml) -> Option<i64> {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let named = k
                    .as_str()
                    .is_some_and(|k| k.to_ascii_lowercase().contains("offset"));
                if named {
                    match v {
                        Yaml::Integer(n) => return Some(*n),
                        Yaml::String(s) => {
                            if let Ok(n) = s.trim().parse() {
                                return Some(n);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(n) = find(v) {
                    return Some(n);
                }
            }
            None
        }
        Yaml::Array(a) => a.iter().find_map(find),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_layouts_a_consumer_might_write() {
        assert_eq!(parse("1234\n"), Some(1234));
        assert_eq!(parse("offset: 1234\n"), Some(1234));
        assert_eq!(
            parse("stream: annotations\nconsumer:\n  offset: 98765\n"),
            Some(98765)
        );
        assert_eq!(parse("last_offset: '77'\n"), Some(77));
        assert_eq!(parse("stream: annotations\n"), None);
        assert_eq!(parse("offset: [unclosed\n"), None);
        assert_eq!(parse(""), None);
    }
}
