//! Small OCI image archives made from host files, for test pods (no registry,
//! no daemon). The garretd/operator images come from `crate::images`.
//!
//! A [`LocalImage`] is one layer built from files copied off the host (a static
//! binary, or a dynamic one with the libraries `ldd` names). [`LocalImage::write`]
//! produces a tarball holding both an OCI layout and a docker
//! `manifest.json`, which `ctr -n k8s.io images import` (see
//! [`crate::Node::import_image`]) accepts. The layer is reproducible: sorted
//! entries, uid/gid 0, mtime 0 (GNU tar flags), so equal inputs give equal
//! digests.
//!
//! Name images `local.test/<name>:<tag>` and use `imagePullPolicy: Never`:
//! the node has no registry to pull from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::{Error, Result};

/// One entry of the image's root filesystem.
#[derive(Clone, Debug)]
enum Entry {
    /// Copy a host file (mode kept).
    Copy { src: PathBuf, dest: String },
    /// A file with the given text and mode.
    Text {
        dest: String,
        text: String,
        mode: u32,
    },
    /// An empty directory.
    Dir { dest: String },
    /// A symlink `dest -> target`.
    Symlink { dest: String, target: String },
}

/// A single-layer image to be written with [`LocalImage::write`].
#[derive(Clone, Debug)]
pub struct LocalImage {
    name: String,
    entries: Vec<Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
}

impl LocalImage {
    /// An empty image named `name` (e.g. `local.test/busybox:e2e`), with
    /// `PATH=/bin:/usr/bin:/sbin:/usr/sbin` and `/tmp`.
    pub fn new(name: impl Into<String>) -> Self {
        LocalImage {
            name: name.into(),
            entries: vec![Entry::Dir {
                dest: "/tmp".into(),
            }],
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into()],
        }
    }

    /// The image reference given to [`Image::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copy the host file `src` to `dest` (an absolute path in the image).
    pub fn file(mut self, src: impl Into<PathBuf>, dest: impl Into<String>) -> Self {
        self.entries.push(Entry::Copy {
            src: src.into(),
            dest: dest.into(),
        });
        self
    }

    /// Copy a dynamically linked host binary to `dest`, with every library
    /// `ldd` lists at its host path (so the loader finds them).
    pub fn binary_with_libs(
        mut self,
        src: impl Into<PathBuf>,
        dest: impl Into<String>,
    ) -> Result<Self> {
        let src = src.into();
        for lib in ldd(&src)? {
            let dest = lib.to_string_lossy().into_owned();
            // Copying follows symlinks: the loader asks for the name ldd
            // printed, and the target's content under that name is enough.
            self.entries.push(Entry::Copy { src: lib, dest });
        }
        self.entries.push(Entry::Copy {
            src,
            dest: dest.into(),
        });
        Ok(self)
    }

    /// A file with `text` (mode 0644).
    pub fn text(mut self, dest: impl Into<String>, text: impl Into<String>) -> Self {
        self.entries.push(Entry::Text {
            dest: dest.into(),
            text: text.into(),
            mode: 0o644,
        });
        self
    }

    /// An empty directory (mode 0755; `/tmp` is 1777 and always present).
    pub fn dir(mut self, dest: impl Into<String>) -> Self {
        self.entries.push(Entry::Dir { dest: dest.into() });
        self
    }

    /// A symlink `dest -> target`.
    pub fn symlink(mut self, dest: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push(Entry::Symlink {
            dest: dest.into(),
            target: target.into(),
        });
        self
    }

    /// The image's entrypoint.
    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    /// The image's default arguments.
    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable `KEY=value`.
    pub fn env(mut self, var: impl Into<String>) -> Self {
        self.env.push(var.into());
        self
    }

    /// Write the archive into `dir` (created if needed) and return its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let safe: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        mkdir(dir)?;
        // A work directory of its own: tests may write the same image at once.
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("{safe}.build."))
            .tempdir_in(dir)
            .map_err(|e| Error::io(format!("create a work directory in {}", dir.display()), e))?;
        let work = work_dir.path();
        let rootfs = self.build_rootfs(work)?;
        let out = work.join("archive");
        let blobs = out.join("blobs/sha256");
        mkdir(&blobs)?;
        let (layer_digest, layer_size) = write_layer(&rootfs, work, &blobs)?;
        self.write_layout(&out, &blobs, &layer_digest, layer_size)?;
        let built = work.join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&out)
            .arg("-cf")
            .arg(&built)
            .args(["oci-layout", "index.json", "manifest.json", "blobs"]))?;
        let archive = dir.join(format!("{safe}.tar"));
        rename(&built, &archive)?;
        Ok(archive)
    }

    /// The image's root filesystem, under `work`.
    fn build_rootfs(&self, work: &Path) -> Result<PathBuf> {
        let rootfs = work.join("rootfs");
        mkdir(&rootfs)?;
        for entry in &self.entries {
            self.place(&rootfs, entry)?;
        }
        let tmp = rootfs.join("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
        Ok(rootfs)
    }

    /// Config, manifest, index, `manifest.json` and `oci-layout` of the
    /// archive in `out` around the layer already in `blobs`.
    fn write_layout(
        &self,
        out: &Path,
        blobs: &Path,
        layer_digest: &str,
        layer_size: u64,
    ) -> Result<()> {
        let mut config = json!({ "Env": self.env });
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["Cmd"] = json!(self.cmd);
        }
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
            "history": [{ "created_by": "garret-e2e" }],
        });
        let (config_digest, config_size) = put_blob(blobs, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) = put_blob(blobs, &manifest)?;
        let tag = match self.name.rsplit_once('/').map_or(&*self.name, |(_, t)| t) {
            last if last.contains(':') => last.rsplit_once(':').map_or("latest", |(_, t)| t),
            _ => "latest",
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_size,
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        write_json(&out.join("index.json"), &index)?;
        write_json(
            &out.join("manifest.json"),
            &json!([{
                "Config": format!("blobs/sha256/{config_digest}"),
                "RepoTags": [self.name],
                "Layers": [format!("blobs/sha256/{layer_digest}")],
            }]),
        )?;
        std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| Error::io("write oci-layout", e))?;
        Ok(())
    }

    fn place(&self, rootfs: &Path, entry: &Entry) -> Result<()> {
        match entry {
            Entry::Copy { src, dest } => {
                let to = in_rootfs(rootfs, dest)?;
                mkdir_parent(&to)?;
                std::fs::copy(src, &to).map_err(|e| {
                    Error::io(
                        format!("copy {} into image {} as {dest}", src.display(), self.name),
                        e,
                    )
                })?;
            }
            Entry::Text { dest, text, mode } => {
                let to = in_rootfs(rootfs, dest)?;
                mkdir_parent(&to)?;
                std::fs::write(&to, text)
                    .and_then(|()| {
                        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))
                    })
                    .map_err(|e| Error::io(format!("write {}", to.display()), e))?;
            }
            Entry::Dir { dest } => mkdir(&in_rootfs(rootfs, dest)?)?,
            Entry::Symlink { dest, target } => {
                let to = in_rootfs(rootfs, dest)?;
                mkdir_parent(&to)?;
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(target, &to)
                    .map_err(|e| Error::io(format!("symlink {}", to.display()), e))?;
            }
        }
        Ok(())
    }
}

/// `dest` (absolute, no `..`) under `rootfs`.
fn in_rootfs(rootfs: &Path, dest: &str) -> Result<PathBuf> {
    let path = Path::new(dest);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::Usage(format!(
            "image path {dest:?} must be absolute and contain no `..`"
        )));
    }
    Ok(rootfs.join(path.strip_prefix("/").unwrap_or(path)))
}

/// Libraries (absolute paths, including the loader) `ldd` lists for `bin`.
fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| Error::io("run ldd", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The layer tarball of `rootfs` (reproducible: sorted, owner 0, mtime 0),
/// moved into `blobs` under its digest; returns the digest and size.
fn write_layer(rootfs: &Path, work: &Path, blobs: &Path) -> Result<(String, u64)> {
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-C",
        ])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layer_digest = sha256_file(&layer)?;
    let layer_size = file_len(&layer)?;
    rename(&layer, &blobs.join(&layer_digest))?;
    Ok((layer_digest, layer_size))
}

fn put_blob(blobs: &Path, value: &serde_json::Value) -> Result<(String, usize)> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Usage(e.to_string()))?;
    let tmp = blobs.join("incoming");
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io("write blob", e))?;
    let digest = sha256_file(&tmp)?;
    rename(&tmp, &blobs.join(&digest))?;
    Ok((digest, bytes.len()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Hex SHA-256 of a file, by `sha256sum` (coreutils): no hashing crate
/// needed for a few small files.
fn sha256_file(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| Error::io("run sha256sum", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() == 64 => Ok(hex.to_string()),
        _ => Err(Error::Usage(format!(
            "sha256sum {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(format!("rename {}", from.display()), e))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("mkdir {}", path.display()), e))
}

fn mkdir_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) => mkdir(p),
        None => Ok(()),
    }
}

/// Run a command to completion; a failure carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("run {cmd:?}"), e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_in_the_rootfs() {
        let root = Path::new("/r");
        assert_eq!(in_rootfs(root, "/bin/sh").unwrap(), Path::new("/r/bin/sh"));
        assert!(in_rootfs(root, "bin/sh").is_err());
        assert!(in_rootfs(root, "/../etc").is_err());
    }

    #[test]
    fn archive_has_oci_layout_and_docker_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let tar = LocalImage::new("local.test/unit:t1")
            .text("/www/index.html", "hi\n")
            .symlink("/bin/sh", "busybox")
            .entrypoint(["/bin/sh"])
            .write(dir.path())
            .unwrap();
        let list = run(Command::new("tar").arg("-tf").arg(&tar)).unwrap();
        for want in ["oci-layout", "index.json", "manifest.json", "blobs/sha256/"] {
            assert!(list.lines().any(|l| l == want), "{want} missing in {list}");
        }
        // Same inputs, same digests.
        let again = LocalImage::new("local.test/unit:t1")
            .text("/www/index.html", "hi\n")
            .symlink("/bin/sh", "busybox")
            .entrypoint(["/bin/sh"])
            .write(&dir.path().join("again"))
            .unwrap();
        let index =
            |p: &Path| run(Command::new("tar").arg("-xOf").arg(p).arg("index.json")).unwrap();
        assert_eq!(index(&tar), index(&again));
    }
}
