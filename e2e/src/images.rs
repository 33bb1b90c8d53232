//! The garretd and garret-operator container images, as OCI image archives built from the
//! workspace's binaries by `tools/images/build.sh` (no registry, no container daemon).
//!
//! ```no_run
//! # fn t() -> garret_e2e::Result<()> {
//! let images = garret_e2e::build_images(&garret_e2e::default_bin_dir()?)?;
//! // `ctr -n k8s.io images import <archive>` names each image `name`.
//! for image in [&images.garretd, &images.operator] {
//!     println!("{} from {}", image.name, image.archive.display());
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The command that builds the images (run from the repository root).
pub const IMAGES_BUILD_COMMAND: &str = "bash tools/images/build.sh";

/// Published names of the images, without the tag (the workspace version). The operator's
/// default `BinaryCache` image and the chart's default operator image use these names, so
/// an imported archive is what a cluster with `imagePullPolicy: IfNotPresent` runs.
pub const GARRETD_REPOSITORY: &str = "ghcr.io/garret-dev/garretd";
/// See [`GARRETD_REPOSITORY`].
pub const OPERATOR_REPOSITORY: &str = "ghcr.io/garret-dev/garret-operator";

/// One image archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageArchive {
    /// Full image name the archive carries, e.g. `ghcr.io/garret-dev/garretd:0.1.0`.
    pub name: String,
    /// The OCI image archive (also readable by `docker load`).
    pub archive: PathBuf,
}

/// Both images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// garretd, with the `garret` client next to it.
    pub garretd: ImageArchive,
    /// garret-operator.
    pub operator: ImageArchive,
}

/// The directory holding the workspace's binaries for the running test binary: the
/// parent of its `deps/` directory (e.g. `target/debug`). `cargo build --workspace
/// --bins` puts `garretd`, `garret` and `garret-operator` there.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the test binary", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::Images(format!("{} has no parent directory", exe.display())))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// Build (or reuse, when nothing changed) both image archives from the binaries in
/// `bin_dir`, into `images/` next to it (`target/debug` → `target/images`). Runs
/// [`IMAGES_BUILD_COMMAND`], which needs root and installs `umoci` from Debian when missing;
/// concurrent calls wait for each other. Takes a few seconds when the binaries changed, a
/// few milliseconds otherwise.
pub fn build_images(bin_dir: &Path) -> Result<Images> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = match bin_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("images"),
        _ => bin_dir.join("images"),
    };
    let script = root.join("tools/images/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&out)
        .current_dir(&root)
        .output()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Error::Images(format!(
            "`{IMAGES_BUILD_COMMAND} --bin-dir {} --out {}` failed ({}):\n{}",
            bin_dir.display(),
            out.display(),
            output.status,
            stderr.trim_end()
        )));
    }
    parse_output(
        &String::from_utf8_lossy(&output.stdout),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The script's stdout: one `<archive>\t<name>` line per image.
fn parse_output(stdout: &str, version: &str) -> Result<Images> {
    let find = |repository: &str| -> Result<ImageArchive> {
        let name = format!("{repository}:{version}");
        stdout
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(_, n)| *n == name)
            .map(|(archive, n)| ImageArchive {
                name: n.to_string(),
                archive: PathBuf::from(archive),
            })
            .ok_or_else(|| {
                Error::Images(format!(
                    "{IMAGES_BUILD_COMMAND} did not report {name}; its output was:\n{stdout}"
                ))
            })
    };
    Ok(Images {
        garretd: find(GARRETD_REPOSITORY)?,
        operator: find(OPERATOR_REPOSITORY)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_output() {
        let out = "/t/images/garretd.tar\tghcr.io/garret-dev/garretd:0.1.0\n\
                   /t/images/garret-operator.tar\tghcr.io/garret-dev/garret-operator:0.1.0\n";
        let images = parse_output(out, "0.1.0").expect("parse");
        assert_eq!(
            images.garretd,
            ImageArchive {
                name: "ghcr.io/garret-dev/garretd:0.1.0".into(),
                archive: "/t/images/garretd.tar".into()
            }
        );
        assert_eq!(
            images.operator.archive,
            PathBuf::from("/t/images/garret-operator.tar")
        );
        let err = parse_output(out, "0.2.0").expect_err("other version");
        assert!(err.to_string().contains("garretd:0.2.0"), "{err}");
    }

    /// The real script on the workspace's binaries (CI builds them before the tests).
    #[test]
    fn builds_both_archives_from_the_workspace_binaries() {
        let bin_dir = default_bin_dir().expect("bin dir");
        let have_bins = ["garretd", "garret", "garret-operator"]
            .iter()
            .all(|b| bin_dir.join(b).is_file());
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !(have_bins && root) && std::env::var_os("CI").is_none() {
            eprintln!("skipped: needs root and `cargo build --workspace --bins`");
            return;
        }
        let images = build_images(&bin_dir).expect("build_images");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            images.garretd.name,
            format!("{GARRETD_REPOSITORY}:{version}")
        );
        assert_eq!(
            images.operator.name,
            format!("{OPERATOR_REPOSITORY}:{version}")
        );
        for image in [&images.garretd, &images.operator] {
            let listing = Command::new("tar")
                .arg("-tf")
                .arg(&image.archive)
                .output()
                .expect("tar");
            let listing = String::from_utf8_lossy(&listing.stdout);
            for entry in ["oci-layout", "index.json", "manifest.json"] {
                assert!(listing.lines().any(|l| l == entry), "{entry} in {listing}");
            }
        }
        // Nothing changed: the second call reuses the archives.
        assert_eq!(build_images(&bin_dir).expect("again"), images);
    }

    /// The images the script names are the ones the operator and the chart deploy by default.
    #[test]
    fn names_match_the_operator_and_chart_defaults() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            garret_operator::types::default_image(),
            format!("{GARRETD_REPOSITORY}:{version}")
        );
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/garret-operator");
        let read = |f: &str| std::fs::read_to_string(chart.join(f)).expect(f);
        let chart_yaml = read("Chart.yaml");
        assert!(
            chart_yaml
                .lines()
                .any(|l| l.trim() == format!("appVersion: \"{version}\"")),
            "Chart.yaml appVersion must be {version} (the image tag defaults to it)"
        );
        let values = read("values.yaml");
        assert!(
            values
                .lines()
                .any(|l| l.trim() == format!("repository: {OPERATOR_REPOSITORY}")),
            "values.yaml image.repository must be {OPERATOR_REPOSITORY}"
        );
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/images/build.sh"),
        )
        .expect("build.sh");
        assert!(script.contains("REGISTRY=${GARRET_IMAGE_REGISTRY:-ghcr.io/garret-dev}"));
    }
}
