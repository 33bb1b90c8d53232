//! Test fixtures under `tests/fixtures/`: BinaryCache specs, and inputs with expected
//! outputs of the pure pipeline. An expected file is compared as data (YAML parsed to JSON
//! values), never as text. `GARRET_BLESS=1 cargo test -p garret-operator` rewrites the
//! expected files from the current code; review the diff before committing it.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::validate::{validate, Validated};
use crate::types::BinaryCache;

/// A minimal BinaryCache: two caches, local storage, SQLite.
pub const MINIMAL: &str = "minimal.yaml";
/// Everything set: S3, PostgreSQL, three replicas, ingress, resources, GC.
pub const FULL: &str = "full.yaml";

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Parse fixture `name`.
pub fn read<T: DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A BinaryCache as a user would write it, with the uid and namespace the API server adds.
pub fn parse_binary_cache(yaml: &str) -> BinaryCache {
    let mut bc: BinaryCache = serde_saphyr::from_str(yaml).expect("fixture parses");
    bc.metadata.uid = Some("0000-uid".into());
    bc.metadata.namespace = Some("ns".into());
    bc
}

/// Fixture `name` as [`parse_binary_cache`] reads it.
pub fn binary_cache(name: &str) -> BinaryCache {
    let text = std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    parse_binary_cache(&text)
}

/// Fixture `name`, validated.
pub fn validated(name: &str) -> Validated {
    validate(&binary_cache(name)).expect("fixture is valid")
}

/// The first place where `a` and `b` differ, as a JSON-pointer-like path.
fn first_difference(at: String, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(format!("{at}/{k}"), p, q),
                _ => Some(format!("{at}/{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(format!("{at}/{i}"), p, q)),
        _ => (a != b).then_some(at),
    }
}

/// `actual` must equal the expected fixture `name`; with `GARRET_BLESS=1` it is written
/// there instead.
pub fn assert_expected(name: &str, actual: &Value) {
    if std::env::var_os("GARRET_BLESS").is_some() {
        let yaml = serde_saphyr::to_string(actual).expect("render YAML");
        let header = "# Expected output of the pure pipeline, compared as data. Regenerate with\n# `GARRET_BLESS=1 cargo test -p garret-operator` and review the diff.\n";
        std::fs::write(path(name), format!("{header}{yaml}")).expect("write fixture");
        return;
    }
    let expected: Value = read(name);
    if let Some(at) = first_difference(String::new(), &expected, actual) {
        panic!(
            "{name} differs at {at}\nexpected: {}\nactual: {}",
            serde_json::to_string_pretty(&expected).unwrap_or_default(),
            serde_json::to_string_pretty(actual).unwrap_or_default()
        );
    }
}
