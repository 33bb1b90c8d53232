//! Revoked tokens: a plain list, one entry per line — a token's `jti`, optionally followed by
//! the token's `exp` (Unix seconds), or `sub:<subject>` to revoke every token of a subject.
//! `#` starts a comment. Kept as a file so a mounted ConfigMap or Secret can change it in
//! place.
//!
//! ```text
//! # <jti> [<exp>]  # free text
//! 3f9c0a5e2b7d4e8f9a1b2c3d4e5f6a7b 1800000000  # default/ci Deleted 2026-12-01T14:00:00Z
//! sub:mallory
//! ```
//!
//! The `exp` is for whoever maintains the list (the operator drops an entry once it has
//! passed, since an expired token is refused anyway); the server itself only matches ids.

use std::collections::HashSet;

use super::Claims;

/// One line of a revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A `jti`, or `sub:<subject>`.
    pub id: String,
    /// The revoked token's `exp`, when the line gives one.
    pub exp: Option<i64>,
    /// Text after `#`, trimmed (empty when none).
    pub comment: String,
}

impl Entry {
    /// Whether this entry can be dropped at `now`: its token has expired. Entries without an
    /// `exp` (and subject entries) stay until removed by hand.
    pub fn expired(&self, now: i64) -> bool {
        self.exp.is_some_and(|exp| exp <= now)
    }

    /// The line for this entry, without a newline. Ids and comments are single-line by
    /// construction ([`parse_entries`] never yields anything else; callers building entries
    /// pass `jti`s and their own text, whose line breaks are replaced here).
    pub fn render(&self) -> String {
        let mut line = self.id.clone();
        if let Some(exp) = self.exp {
            line.push(' ');
            line.push_str(&exp.to_string());
        }
        let comment = self.comment.replace(['\n', '\r'], " ");
        if !comment.is_empty() {
            line.push_str("  # ");
            line.push_str(comment.trim());
        }
        line
    }
}

/// Every entry of a list, in file order. Blank and comment-only lines are skipped; a line's
/// first field is its id, a second field is its `exp` if it is an integer (anything else
/// after the id is ignored, so later formats can add fields).
pub fn parse_entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let (entry, comment) = line.split_once('#').unwrap_or((line, ""));
            let mut fields = entry.split_whitespace();
            let id = fields.next()?;
            let exp = fields.next().and_then(|f| f.parse::<i64>().ok());
            Some(Entry {
                id: id.to_string(),
                exp,
                comment: comment.trim().to_string(),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    jtis: HashSet<String>,
    subjects: HashSet<String>,
}

impl RevocationList {
    pub fn parse(text: &str) -> RevocationList {
        RevocationList::from_entries(&parse_entries(text))
    }

    /// The list of `entries` (ids as [`parse_entries`] yields them).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> RevocationList {
        let mut list = RevocationList::default();
        for entry in entries {
            list.add(entry);
        }
        list
    }

    fn add(&mut self, entry: &Entry) {
        match entry.id.strip_prefix("sub:") {
            Some(sub) => self.subjects.insert(sub.trim().to_string()),
            None => self.jtis.insert(entry.id.clone()),
        };
    }

    /// Whether `entry`'s id (a `jti` or `sub:<subject>`) is on this list.
    pub fn contains(&self, entry: &Entry) -> bool {
        match entry.id.strip_prefix("sub:") {
            Some(sub) => self.subjects.contains(sub.trim()),
            None => self.jtis.contains(&entry.id),
        }
    }

    /// This list plus `entries`.
    pub fn with<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) -> RevocationList {
        let mut list = self.clone();
        for entry in entries {
            list.add(entry);
        }
        list
    }

    pub fn is_revoked(&self, claims: &Claims) -> bool {
        claims.jti.as_ref().is_some_and(|j| self.jtis.contains(j))
            || claims
                .sub
                .as_ref()
                .is_some_and(|s| self.subjects.contains(s))
    }

    pub fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pushed entries still to be honoured once the mounted list reads `file` at `now`.
///
/// A pushed entry (the operator's `POST /_api/v1/revocations`, sent because a kubelet may take
/// a minute to update a mounted ConfigMap) is held until the file has it — from then on the
/// file decides, so removing a line by hand un-revokes as before — or until its token has
/// expired and needs no list. `pushed` is merged in, first occurrence of an id kept.
pub fn settle(held: Vec<Entry>, pushed: Vec<Entry>, file: &RevocationList, now: i64) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(held.len() + pushed.len());
    let mut seen = RevocationList::default();
    for entry in held.into_iter().chain(pushed) {
        if entry.expired(now) || file.contains(&entry) || seen.contains(&entry) {
            continue;
        }
        seen.add(&entry);
        out.push(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, jti: &str) -> Claims {
        Claims {
            sub: Some(sub.into()),
            jti: Some(jti.into()),
            ..Default::default()
        }
    }

    #[test]
    fn jtis_and_subjects() {
        let list = RevocationList::parse("# revoked\nabc-123\n\n  sub:mallory  # left the team\n");
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked(&claims("alice", "abc-123")));
        assert!(list.is_revoked(&claims("mallory", "x")));
        assert!(!list.is_revoked(&claims("alice", "x")));
        assert!(!list.is_revoked(&Claims::default()));
    }

    #[test]
    fn entries_carry_an_optional_exp() {
        let text = "abc 1800000000  # default/ci Deleted\ndef\nghi notanumber\n# only a comment\n";
        let entries = parse_entries(text);
        assert_eq!(
            entries,
            vec![
                Entry {
                    id: "abc".into(),
                    exp: Some(1_800_000_000),
                    comment: "default/ci Deleted".into()
                },
                Entry {
                    id: "def".into(),
                    exp: None,
                    comment: String::new()
                },
                Entry {
                    id: "ghi".into(),
                    exp: None,
                    comment: String::new()
                },
            ]
        );
        let list = RevocationList::parse(text);
        assert!(
            list.is_revoked(&claims("x", "abc")),
            "the exp is not part of the id"
        );
        assert!(list.is_revoked(&claims("x", "ghi")));
        assert!(entries[0].expired(1_800_000_000) && !entries[0].expired(1_799_999_999));
        assert!(!entries[1].expired(i64::MAX), "no exp: kept");
    }

    #[test]
    fn render_round_trips() {
        let e = Entry {
            id: "abc".into(),
            exp: Some(42),
            comment: "a\nb".into(),
        };
        assert_eq!(e.render(), "abc 42  # a b");
        assert_eq!(
            parse_entries(&e.render()),
            vec![Entry {
                comment: "a b".into(),
                ..e
            }]
        );
        let bare = Entry {
            id: "x".into(),
            exp: None,
            comment: String::new(),
        };
        assert_eq!(bare.render(), "x");
    }

    fn entry(id: &str, exp: Option<i64>) -> Entry {
        Entry {
            id: id.into(),
            exp,
            comment: String::new(),
        }
    }

    #[test]
    fn pushed_entries_are_held_until_the_file_has_them_or_they_expire() {
        let now = 1_000;
        let file = RevocationList::parse("in-file 2000\nsub:eve\n");
        let pushed = vec![
            entry("new", Some(2_000)),
            entry("in-file", Some(2_000)),
            entry("sub:eve", None),
            entry("sub:mallory", None),
            entry("expired", Some(now)),
            entry("new", Some(2_000)),
        ];
        let held = settle(Vec::new(), pushed, &file, now);
        let ids: Vec<&str> = held.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["new", "sub:mallory"]);

        // The effective list honours both; a later push merges with what is held.
        let effective = file.with(&held);
        assert!(effective.is_revoked(&claims("alice", "new")));
        assert!(effective.is_revoked(&claims("mallory", "x")));
        assert!(effective.is_revoked(&claims("alice", "in-file")));
        let held = settle(held, vec![entry("newer", Some(3_000))], &file, now);
        assert_eq!(held.len(), 3);

        // Once the file carries an entry, the file decides: held no longer.
        let file = RevocationList::parse("new 2000\n");
        let held = settle(held, Vec::new(), &file, now);
        let ids: Vec<&str> = held.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["sub:mallory", "newer"]);
        // And past its token's expiry an entry is dropped, file or not.
        let held = settle(held, Vec::new(), &RevocationList::default(), 3_000);
        let ids: Vec<&str> = held.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["sub:mallory"]);
    }
}
