//! The committed CRD YAML under `crds/` must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let generated = garret_operator::crd_yaml().expect("render CRDs");
    assert_eq!(generated.len(), 2);
    for (file, yaml) in generated {
        let committed =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("crds/{file}: {e}"));
        assert!(
            committed == yaml,
            "crds/{file} is stale: run `cargo run -p garret-operator --bin crdgen -- crds`"
        );
    }
}
