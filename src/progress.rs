//! Progress of long commands (`floe compact`, `floe gen`): a bar on a terminal, plain lines
//! otherwise (logs, pipes, CI), so that output meant for files stays readable.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports progress and prints lines without tearing the bar.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `total` steps named `what` when standard error is a terminal.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, {eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            bar
        });
        Progress { bar }
    }

    /// Adds `steps` to the total (work found as it goes).
    pub fn grow(&self, steps: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(steps);
        }
    }

    /// `steps` done.
    pub fn advance(&self, steps: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(steps);
        }
    }

    /// `done` steps done in all.
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// Says what is being worked on (on the bar only).
    pub fn status(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// A line of the command's output, above the bar.
    pub fn line(&self, text: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(text.as_ref()),
            None => println!("{}", text.as_ref()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
