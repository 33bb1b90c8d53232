//! Teardown: [`Node::shutdown`] (also run on drop) kills the node's pid
//! namespace init, which takes every node process, mount and iptables rule
//! with it, then removes the kubelet's cgroups and the directory; the
//! leftover sweep removes cgroup subtrees of test binaries that are gone.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{mkdir, write, Node, CGROUP_ROOT};
use crate::process::DIR_PREFIX;
use crate::{Error, Result};

impl Node {
    /// Stop everything and remove the directory (unless
    /// `GARRET_E2E_KEEP_DIR=1`). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for relay in self
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            relay.stop();
        }
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if self.init_pid > 0 && !procs.is_empty() {
            // SAFETY: plain syscall. The holder (procs[0], not yet reaped by
            // us) is the init's parent and reaps it, so the pid cannot have
            // been reused while the holder is alive.
            if procs[0].exited().is_none() {
                unsafe {
                    libc::kill(self.init_pid, libc::SIGKILL);
                }
            }
            // The holder returns once init is reaped, and init is reaped
            // only after every process of its namespace is gone.
            procs[0].wait_exit(Duration::from_secs(30));
        }
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
        drop(procs);
        remove_cgroups(&self.cgroups, Duration::from_secs(10));
        self.cp.shutdown();
        let mut tempdir = self.tempdir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = tempdir.take() {
            if std::env::var("GARRET_E2E_KEEP_DIR").is_ok_and(|v| v == "1") {
                eprintln!("garret-e2e: kept {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup: the v1 ones, plus
/// the hybrid host's cgroup2 (`unified`) when `with_v2` (runc creates the
/// kubelet's paths there too, so teardown must look there).
pub(super) fn cgroup_hierarchies(with_v2: bool) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            let wanted = kind == "cgroup" || (with_v2 && kind == "cgroup2");
            (wanted && at.starts_with(CGROUP_ROOT)).then(|| PathBuf::from(at))
        })
        .collect()
}

/// Create the kubelet's cgroup root; returns every path teardown removes.
pub(super) fn create_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for h in cgroup_hierarchies(false) {
        let dir = h.join(name);
        mkdir(&dir)?;
        // A cpuset child has no CPUs or memory nodes until given its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(file)) {
                write(&dir.join(file), &v)?;
            }
        }
        made.push(dir);
    }
    if made.is_empty() {
        return Err(Error::Usage(
            "no cgroup v1 hierarchies under /sys/fs/cgroup: the node is only set up for cgroup v1 hosts"
                .into(),
        ));
    }
    let v2: Vec<PathBuf> = cgroup_hierarchies(true)
        .into_iter()
        .map(|h| h.join(name))
        .filter(|d| !made.contains(d))
        .collect();
    made.extend(v2);
    Ok(made)
}

/// Remove cgroup trees bottom-up, retrying while killed tasks drain.
fn remove_cgroups(roots: &[PathBuf], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for root in roots {
        loop {
            let mut dirs = Vec::new();
            collect_dirs(root, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            let failed = dirs
                .iter()
                .any(|d| std::fs::remove_dir(d).is_err() && d.exists());
            if !failed || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Cgroup subtrees `garret-e2e-<pid>-*` of test binaries that are gone.
pub(super) fn sweep_stale_cgroups() {
    for h in cgroup_hierarchies(true) {
        let Ok(entries) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the process exists.
            let gone = pid > 0
                && unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                remove_cgroups(&[e.path()], Duration::from_secs(2));
            }
        }
    }
}
