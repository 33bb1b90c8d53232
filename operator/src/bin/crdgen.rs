//! Prints the CRDs as one multi-document YAML stream; with a directory argument, writes one
//! file per CRD there instead (`cargo run -p garret-operator --bin crdgen -- crds`, and again
//! with `charts/garret-operator/crds`).

fn main() -> anyhow::Result<()> {
    let crds = garret_operator::crd_yaml()?;
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            for (file, yaml) in crds {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
        None => {
            for (_, yaml) in crds {
                println!("---\n{yaml}");
            }
        }
    }
    Ok(())
}
