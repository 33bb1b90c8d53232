//! Child processes that cannot outlive the test binary.
//!
//! * Each child runs in its own process group and is killed with `SIGKILL`
//!   sent to that group.
//! * Each child gets `PR_SET_PDEATHSIG = SIGKILL`. The kernel delivers it when
//!   the *thread* that forked the child exits, so children are forked from one
//!   dedicated thread that lives as long as the process (test threads come and
//!   go); if the test binary dies, even by `SIGKILL`, its children follow.
//! * Stale temporary directories of test binaries that died are swept by
//!   [`sweep_stale_dirs`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;

use crate::{Error, Result};

/// Prefix of every temporary directory the harness creates; followed by the
/// owning process id and a dash.
pub(crate) const DIR_PREFIX: &str = "garret-e2e-";

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> io::Result<&'static mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<SpawnJob>();
    std::thread::Builder::new()
        .name("garret-e2e-spawner".into())
        .spawn(move || {
            // Lives until the process exits: the sender is in a static.
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
    // If another thread won the race, its spawner is used and ours exits
    // when `tx` is dropped here.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// A running component (etcd, kube-apiserver, ...).
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Process {
    /// Start `program args...` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Process> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("dup {}", log.display()), e))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: getpid is async-signal-safe and called before forking.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only calls the
        // async-signal-safe functions prctl and getppid.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        let spawn_err =
            |e: io::Error| Error::io(format!("start {name} ({})", program.display()), e);
        spawner()
            .map_err(spawn_err)?
            .send((cmd, tx))
            .map_err(|_| spawn_err(io::Error::other("spawner thread is gone")))?;
        let child = rx
            .recv()
            .map_err(|_| spawn_err(io::Error::other("spawner thread is gone")))?
            .map_err(spawn_err)?;
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
            reaped: None,
        })
    }

    /// The child's pid (also its process group id).
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.exited().is_none() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// The last `lines` lines of the log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// A startup error carrying the end of the log.
    pub(crate) fn startup_error(&self, reason: impl Into<String>) -> Error {
        Error::Startup {
            component: self.name,
            reason: reason.into(),
            log: self.log.clone(),
            tail: self.log_tail(40),
        }
    }

    /// Kill the whole process group and reap the child.
    pub(crate) fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall; the group id is the child's pid
            // (process_group(0)), and the child is not reaped yet, so the id
            // cannot have been reused.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        self.reaped = self.child.wait().ok();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file (reads at most the last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Remove `garret-e2e-<pid>-*` directories in the temp dir whose process is
/// gone (test binaries killed before they could clean up).
pub(crate) fn sweep_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid == std::process::id() as i32 {
            continue;
        }
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
