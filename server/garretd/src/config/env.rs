//! `GARRETD_SECTION__KEY=value` overrides, so every setting can come from the environment
//! (`GARRETD_`, not `GARRET_`: the client and the test tools own that prefix)
//! (handy in containers). `_` inside a key becomes `-`; `__` separates table levels.

use anyhow::bail;

pub fn vars_with_prefix(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

/// Names that are command-line flags, not config keys.
const NOT_CONFIG: &[&str] = &["CONFIG", "DATA_DIR", "LISTEN", "LOG", "LOG_FORMAT"];

pub fn apply_overrides(table: &mut toml::Table, vars: &[(String, String)]) -> anyhow::Result<()> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("GARRETD_") else {
            continue;
        };
        if NOT_CONFIG.contains(&rest) {
            continue;
        }
        let path: Vec<String> = rest
            .split("__")
            .map(|p| p.to_ascii_lowercase().replace('_', "-"))
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("malformed configuration variable {name}");
        }
        let mut cur = &mut *table;
        for part in &path[..path.len() - 1] {
            let entry = cur
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match entry {
                toml::Value::Table(t) => cur = t,
                _ => bail!("{name}: {part} is not a section"),
            }
        }
        let leaf = path[path.len() - 1].clone();
        cur.insert(leaf, parse_scalar(value));
    }
    Ok(())
}

/// A value is TOML if it parses as such (`3`, `true`, `["a"]`), else a plain string.
fn parse_scalar(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}
