//! Subject and name rules, wildcard matching, and the per-instance prefix.
//! Both implementations validate through here, so a subject that one
//! accepts the other accepts too; the in-process bus also matches through
//! here, so wildcards mean the same in both.

use std::fmt;

use crate::{BusError, Result};

/// The longest subject accepted, prefix excluded. Far above anything the
/// services build; it keeps a bad caller from sending kilobyte subjects.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// The longest stream, consumer, queue group or prefix name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// The subject every reply inbox lives under, relative to the prefix.
pub const INBOX: &str = "_INBOX";

/// What every subject and stream name of one bus instance is put under, so
/// deployments and parallel tests on one NATS server never see each other.
/// A single token: ASCII letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The prefix followed by the separating dot.
    dotted: String,
}

impl Prefix {
    pub fn new(prefix: &str) -> Result<Self> {
        check_name("prefix", prefix)?;
        Ok(Self {
            dotted: format!("{prefix}."),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.dotted[..self.dotted.len() - 1]
    }

    /// A subject to publish to (no wildcards), checked and prefixed.
    pub fn subject(&self, subject: &str) -> Result<String> {
        check_subject(subject, false)?;
        Ok(format!("{}{subject}", self.dotted))
    }

    /// A subject to subscribe or filter on (wildcards allowed), checked and
    /// prefixed.
    pub fn filter(&self, filter: &str) -> Result<String> {
        check_subject(filter, true)?;
        Ok(format!("{}{filter}", self.dotted))
    }

    /// A stream name, checked and prefixed. Stream names cannot hold dots,
    /// so the prefix is joined with `-`.
    pub fn stream(&self, name: &str) -> Result<String> {
        check_name("stream name", name)?;
        Ok(format!("{}-{name}", self.as_str()))
    }

    /// The subject as the caller named it, or `None` for a subject outside
    /// this prefix.
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&self.dotted)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> BusError {
    BusError::Invalid {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// Checks a subject: dot-separated non-empty tokens of printable characters
/// without whitespace. With `wildcards`, a token may be `*` (any one token)
/// and the last token may be `>` (one or more tokens); otherwise neither
/// character may appear at all.
pub fn check_subject(subject: &str, wildcards: bool) -> Result<()> {
    let what = if wildcards {
        "subject filter"
    } else {
        "subject"
    };
    if subject.is_empty() {
        return Err(invalid(what, subject, "must not be empty"));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(invalid(what, subject, "is too long"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            what,
            subject,
            "must not contain whitespace or control characters",
        ));
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        let last = tokens.peek().is_none();
        match token {
            "" => return Err(invalid(what, subject, "must not contain an empty token")),
            "*" if wildcards => {}
            ">" if wildcards && last => {}
            ">" if wildcards => {
                return Err(invalid(what, subject, "`>` must be the last token"));
            }
            _ if token.contains(['*', '>']) => {
                return Err(invalid(
                    what,
                    subject,
                    if wildcards {
                        "wildcards must be whole tokens"
                    } else {
                        "must not contain wildcards"
                    },
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a stream, consumer, queue group or prefix name: 1 to
/// [`MAX_NAME_BYTES`] ASCII letters, digits, `-` and `_`.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(what, name, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(what, name, "is too long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            what,
            name,
            "may contain only ASCII letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

/// Whether `subject` (no wildcards) matches `filter` (NATS wildcards).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether some subject matches both filters, as when two streams would
/// both capture it.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_wildcard_matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("*.b", "a.b"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("a.*.c.>", "a.x.c.d.e"));
        assert!(!matches("a.*.c.>", "a.x.d.d"));
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("*.b", "a.*", true),
            ("a.*.c", "a.b.d", false),
            (">", "x.y", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(overlaps(a, b), expected, "{a} vs {b}");
            assert_eq!(overlaps(b, a), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn subjects_are_checked() {
        for good in ["a", "a.b", "msg.send.7", "_INBOX.x1", "ünï.côdé"] {
            assert!(check_subject(good, false).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a..b", ".a", "a.", "a.*", "a.>", "a\tb", "a*b"] {
            assert!(check_subject(bad, false).is_err(), "{bad:?}");
        }
        for good in ["a.*", "a.>", ">", "*.b.*"] {
            assert!(check_subject(good, true).is_ok(), "{good}");
        }
        for bad in ["a.>.b", "a*", "a.b>", " a"] {
            assert!(check_subject(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_subject(&"a".repeat(MAX_SUBJECT_BYTES + 1), false).is_err());
    }

    #[test]
    fn prefix_is_applied_and_stripped() {
        let prefix = Prefix::new("natter").expect("valid prefix");
        assert_eq!(prefix.subject("msg.1").expect("valid"), "natter.msg.1");
        assert_eq!(prefix.filter("msg.>").expect("valid"), "natter.msg.>");
        assert_eq!(prefix.stream("messages").expect("valid"), "natter-messages");
        assert_eq!(prefix.strip("natter.msg.1"), Some("msg.1"));
        assert_eq!(prefix.strip("other.msg.1"), None);
        assert_eq!(prefix.strip("nattery.msg.1"), None);
        assert!(Prefix::new("a.b").is_err());
        assert!(Prefix::new("").is_err());
    }
}
