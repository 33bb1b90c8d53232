//! Pure text edits of `nix.conf` and `netrc`, so `garret use` can be run any number of times
//! and never disturbs lines it doesn't own.

/// The default Nix cache, kept when `substituters` is created (Attic does the same) so
/// adding a cache doesn't silently drop cache.nixos.org.
pub const NIXOS_SUBSTITUTER: &str = "https://cache.nixos.org";
pub const NIXOS_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// Index of the line setting `key` (`key = ...`), ignoring comments.
fn find_setting(lines: &[String], key: &str) -> Option<usize> {
    lines.iter().position(|l| {
        let code = l.split('#').next().unwrap_or("");
        match code.split_once('=') {
            Some((k, _)) => k.trim() == key,
            None => false,
        }
    })
}

fn split_lines(conf: &str) -> Vec<String> {
    conf.lines().map(str::to_string).collect()
}

fn join_lines(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Puts `value` first in the list setting `key` (dropping any other occurrence of it). A
/// missing setting is created as `key = value default_rest`.
pub fn prepend_to_list(conf: &str, key: &str, value: &str, default_rest: &str) -> String {
    let mut lines = split_lines(conf);
    match find_setting(&lines, key) {
        Some(i) => {
            let line = &lines[i];
            let (code, comment) = match line.find('#') {
                Some(p) => (&line[..p], Some(&line[p..])),
                None => (line.as_str(), None),
            };
            let rhs = code.split_once('=').map(|(_, v)| v).unwrap_or("");
            let mut values: Vec<&str> = rhs.split_whitespace().filter(|v| *v != value).collect();
            values.insert(0, value);
            let mut new = format!("{key} = {}", values.join(" "));
            if let Some(c) = comment {
                new.push(' ');
                new.push_str(c);
            }
            if *line == new {
                return conf.to_string();
            }
            lines[i] = new;
        }
        None => {
            let mut new = format!("{key} = {value}");
            if !default_rest.is_empty() {
                new.push(' ');
                new.push_str(default_rest);
            }
            lines.push(new);
        }
    }
    join_lines(&lines)
}

/// Sets a scalar setting, replacing its line or appending one.
pub fn set_value(conf: &str, key: &str, value: &str) -> String {
    let mut lines = split_lines(conf);
    let new = format!("{key} = {value}");
    match find_setting(&lines, key) {
        Some(i) if lines[i] == new => return conf.to_string(),
        Some(i) => lines[i] = new,
        None => lines.push(new),
    }
    join_lines(&lines)
}

/// Byte ranges of netrc entries (`machine NAME ...` up to the next `machine`/`default`).
fn netrc_entries(text: &str) -> Vec<(usize, usize, Option<String>)> {
    let mut tokens = Vec::new();
    let mut i = 0;
    let b = text.as_bytes();
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        tokens.push((start, &text[start..i]));
    }
    let mut entries: Vec<(usize, usize, Option<String>)> = Vec::new();
    let mut k = 0;
    while k < tokens.len() {
        let (pos, tok) = tokens[k];
        if tok == "machine" || tok == "default" {
            if let Some(last) = entries.last_mut() {
                last.1 = pos;
            }
            let host = if tok == "machine" {
                tokens.get(k + 1).map(|t| t.1.to_string())
            } else {
                None
            };
            entries.push((pos, text.len(), host));
        }
        k += 1;
    }
    entries
}

/// Sets the password for `host`: any existing entries for it are replaced by one line
/// `machine HOST password TOKEN`; every other entry is kept byte for byte.
pub fn upsert_netrc(text: &str, host: &str, token: &str) -> String {
    let line = format!("machine {host} password {token}");
    let entries = netrc_entries(text);
    let mut out = String::new();
    let mut cursor = 0;
    for (start, end, h) in &entries {
        if h.as_deref() == Some(host) {
            out.push_str(&text[cursor..*start]);
            cursor = *end;
        }
    }
    out.push_str(&text[cursor..]);
    // `default` matches every host, so our entry must come before it to be used.
    if let Some((pos, _, _)) = netrc_entries(&out)
        .into_iter()
        .find(|(s, _, h)| h.is_none() && out[*s..].starts_with("default"))
    {
        out.insert_str(pos, &format!("{line}\n"));
        return out;
    }
    let mut out = out.trim_end().to_string();
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "http://127.0.0.1:8080/hello";
    const KEY: &str = "hello:abc=";

    #[test]
    fn creates_settings_with_nixos_defaults() {
        let c = prepend_to_list("", "substituters", SUB, NIXOS_SUBSTITUTER);
        assert_eq!(c, format!("substituters = {SUB} {NIXOS_SUBSTITUTER}\n"));
    }

    #[test]
    fn prepends_and_keeps_other_lines_and_values() {
        let conf = "# my settings\nsandbox = true\nsubstituters = https://a https://b # mine\nmax-jobs = 4\n";
        let c = prepend_to_list(conf, "substituters", SUB, NIXOS_SUBSTITUTER);
        assert_eq!(
            c,
            format!("# my settings\nsandbox = true\nsubstituters = {SUB} https://a https://b # mine\nmax-jobs = 4\n")
        );
        // idempotent
        assert_eq!(
            prepend_to_list(&c, "substituters", SUB, NIXOS_SUBSTITUTER),
            c
        );
    }

    #[test]
    fn moves_existing_value_to_front_and_fills_empty_setting() {
        let c = prepend_to_list(
            "substituters = https://a http://x\n",
            "substituters",
            "http://x",
            "",
        );
        assert_eq!(c, "substituters = http://x https://a\n");
        let c = prepend_to_list(
            "trusted-public-keys =\n",
            "trusted-public-keys",
            KEY,
            NIXOS_KEY,
        );
        assert_eq!(c, format!("trusted-public-keys = {KEY}\n"));
    }

    #[test]
    fn does_not_confuse_similar_keys() {
        let conf = "extra-substituters = https://e\n";
        let c = prepend_to_list(conf, "substituters", SUB, "");
        assert_eq!(
            c,
            format!("extra-substituters = https://e\nsubstituters = {SUB}\n")
        );
    }

    #[test]
    fn set_value_replaces_or_appends() {
        let c = set_value("a = 1\nnetrc-file = /old\n", "netrc-file", "/new");
        assert_eq!(c, "a = 1\nnetrc-file = /new\n");
        assert_eq!(set_value(&c, "netrc-file", "/new"), c);
        assert_eq!(set_value("a = 1", "b", "2"), "a = 1\nb = 2\n");
    }

    #[test]
    fn netrc_replaces_only_the_same_host() {
        let text = "machine other.example login bob password pw\nmachine 127.0.0.1\n  login x\n  password old\ndefault login anon password anon\n";
        let n = upsert_netrc(text, "127.0.0.1", "tok");
        assert_eq!(
            n,
            "machine other.example login bob password pw\nmachine 127.0.0.1 password tok\ndefault login anon password anon\n"
        );
        assert_eq!(upsert_netrc(&n, "127.0.0.1", "tok"), n);
        assert_eq!(upsert_netrc("", "h", "t"), "machine h password t\n");
        // a host that is a prefix of another is not touched
        let n = upsert_netrc("machine 127.0.0.10 password a\n", "127.0.0.1", "b");
        assert_eq!(
            n,
            "machine 127.0.0.10 password a\nmachine 127.0.0.1 password b\n"
        );
    }
}
