//! Push progress: indicatif bars when stderr is a terminal, one plain line per event
//! otherwise (CI logs stay readable and greppable).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

/// Progress of one path's upload.
pub struct PathProgress {
    bar: Option<ProgressBar>,
    name: String,
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars only on a terminal.
    pub fn new() -> Progress {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi }
    }

    /// A line above the bars (or plain on stderr).
    pub fn println(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    pub fn start(&self, name: &str, size: u64) -> PathProgress {
        let bar = self.multi.as_ref().map(|m| {
            let style = ProgressStyle::with_template(
                "{spinner} {msg:40!} {bytes:>10}/{total_bytes:>10} {bytes_per_sec:>12} [{bar:30}] {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let b = m.add(ProgressBar::new(size).with_style(style));
            b.set_message(name.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        if bar.is_none() {
            eprintln!("pushing {name} ({})", HumanBytes(size));
        }
        PathProgress {
            bar,
            name: name.to_string(),
            multi: self.multi.clone(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl PathProgress {
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Removes the bar and reports the outcome as a line.
    pub fn finish(&self, outcome: &str) {
        let line = format!("{outcome} {}", self.name);
        match (&self.bar, &self.multi) {
            (Some(b), Some(m)) => {
                b.finish_and_clear();
                m.remove(b);
                let _ = m.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }
}
