//! Revoked tokens: a plain list, one entry per line — a token's `jti`, or `sub:<subject>`
//! to revoke every token of a subject. `#` starts a comment. Kept as a file so a mounted
//! ConfigMap or Secret can change it in place.

use std::collections::HashSet;

use super::Claims;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    jtis: HashSet<String>,
    subjects: HashSet<String>,
}

impl RevocationList {
    pub fn parse(text: &str) -> RevocationList {
        let mut list = RevocationList::default();
        for line in text.lines() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            match entry.strip_prefix("sub:") {
                Some(sub) => list.subjects.insert(sub.trim().to_string()),
                None => list.jtis.insert(entry.to_string()),
            };
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
}
