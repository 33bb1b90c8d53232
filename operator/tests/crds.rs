//! The committed CRD YAML under `crds/` (and its copy in the Helm chart) must be exactly
//! what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = garret_operator::crd_yaml().expect("render CRDs");
    assert_eq!(generated.len(), 2);
    for dir in ["crds", "charts/garret-operator/crds"] {
        for (file, yaml) in &generated {
            let path = root.join(dir).join(file);
            let committed =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{dir}/{file}: {e}"));
            assert!(
                &committed == yaml,
                "{dir}/{file} is stale: run `cargo run -p garret-operator --bin crdgen -- {dir}`"
            );
        }
    }
}
