//! Cache-name patterns as used for token claim keys and `atticadm` flags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Error;

/// Longest accepted pattern, matching the cache-name limit.
const MAX_LEN: usize = 50;

/// A validated pattern such as `alice-*` or `*`.
///
/// Grammar: `^[A-Za-z0-9*][A-Za-z0-9_+*-]{0,49}$`. `*` stands for any run of characters
/// (including none); every other character matches itself, case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CachePattern(String);

impl CachePattern {
    /// Validate and wrap a pattern.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if is_valid(text) {
            Ok(CachePattern(text.to_owned()))
        } else {
            Err(Error::InvalidPattern(text.to_owned()))
        }
    }

    /// The pattern text exactly as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the pattern has no wildcard, i.e. it names exactly one cache.
    pub fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }

    /// Whether `cache_name` matches this pattern.
    ///
    /// Uses the classic two-pointer glob walk that only ever backtracks to the most recent `*`,
    /// so the cost is bounded by `pattern.len() * name.len()` even for hostile inputs like
    /// `*a*a*a*…b`. Bytes are compared directly: pattern characters are all ASCII, so they can
    /// never match part of a multi-byte character in the name.
    pub fn matches(&self, cache_name: &str) -> bool {
        glob_match(self.0.as_bytes(), cache_name.as_bytes())
    }
}

fn is_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_LEN
        && (first.is_ascii_alphanumeric() || first == b'*')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'*' | b'-'))
}

pub(super) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position just after the last `*` seen, and the text position that star currently
    // extends to. Retrying only from the latest star is sufficient: any earlier star could
    // only absorb what the later one can absorb too.
    let mut resume: Option<(usize, usize)> = None;

    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                resume = Some((p, t));
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((after_star, star_end)) => {
                    // Let the star swallow one more character and retry.
                    p = after_star;
                    t = star_end + 1;
                    resume = Some((after_star, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl fmt::Display for CachePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CachePattern {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        CachePattern::parse(s)
    }
}

impl AsRef<str> for CachePattern {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for CachePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CachePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CachePattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> CachePattern {
        CachePattern::parse(s).unwrap()
    }

    #[test]
    fn accepts_valid_patterns() {
        for ok in [
            "a",
            "*",
            "**",
            "Z9",
            "alice-*",
            "*-ci",
            "alice+shared",
            "a_b-c+d*e",
            "0",
            &"x".repeat(50),
            &format!("*{}", "y".repeat(49)),
        ] {
            assert!(CachePattern::parse(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_invalid_patterns() {
        for bad in [
            "",
            "_api",
            "-x",
            "+x",
            "a b",
            "a.b",
            "a/b",
            "a?",
            "ä",
            "aé",
            "a\n",
            &"x".repeat(51),
            &"*".repeat(51),
        ] {
            assert!(
                matches!(CachePattern::parse(bad), Err(Error::InvalidPattern(_))),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        let p = pat("prod");
        assert!(p.is_literal());
        assert!(p.matches("prod"));
        assert!(!p.matches("Prod"), "matching is case-sensitive");
        assert!(!p.matches("prod2"));
        assert!(!p.matches("xprod"));
        assert!(!p.matches(""));
    }

    #[test]
    fn star_matches_any_run_including_empty() {
        let p = pat("alice-*");
        assert!(!p.is_literal());
        assert!(p.matches("alice-"));
        assert!(p.matches("alice-dev"));
        assert!(p.matches("alice-a-b-c"));
        assert!(!p.matches("alice"));
        assert!(!p.matches("bob-alice-x"));

        let any = pat("*");
        assert!(any.matches(""));
        assert!(any.matches("anything+at_all"));
    }

    #[test]
    fn stars_in_the_middle_and_multiple_stars() {
        let p = pat("a*b*c");
        assert!(p.matches("abc"));
        assert!(p.matches("aXXbYYc"));
        assert!(p.matches("abbbc"));
        assert!(p.matches("acbc"), "first star must be able to skip a 'c'");
        assert!(!p.matches("acb"));
        assert!(!p.matches("abcd"));

        let p = pat("*ci*");
        assert!(p.matches("ci"));
        assert!(p.matches("all-ci-x"));
        assert!(!p.matches("c-i"));

        let p = pat("*-*-*");
        assert!(p.matches("--"));
        assert!(p.matches("a-b-c"));
        assert!(!p.matches("a-b"));
    }

    #[test]
    fn backtracking_finds_later_occurrences() {
        // The first "ab" is a false start; the star has to move past it.
        assert!(pat("*abc").matches("ababc"));
        assert!(pat("a*aab").matches("aaaab"));
        assert!(!pat("a*aab").matches("aaaa"));
    }

    #[test]
    fn non_ascii_names_never_match_literal_ascii() {
        assert!(pat("*").matches("é"));
        assert!(pat("a*").matches("aé"));
        assert!(!pat("a*b").matches("aé"));
        assert!(!pat("a").matches("é"));
    }

    #[test]
    fn adversarial_input_is_fast() {
        // Exponential matchers take ages here; ours is quadratic at worst.
        let pattern = format!("{}b", "*a".repeat(24));
        let p = pat(&pattern);
        let name = "a".repeat(100_000);
        let start = std::time::Instant::now();
        assert!(!p.matches(&name));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let p: CachePattern = serde_json::from_str("\"team-*\"").unwrap();
        assert_eq!(p.as_str(), "team-*");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"team-*\"");
        assert!(serde_json::from_str::<CachePattern>("\"bad name\"").is_err());
        assert!(serde_json::from_str::<CachePattern>("1").is_err());
    }

    #[test]
    fn display_and_from_str() {
        let p: CachePattern = "x*".parse().unwrap();
        assert_eq!(p.to_string(), "x*");
        assert_eq!(p.as_ref(), "x*");
        assert!("".parse::<CachePattern>().is_err());
    }
}
