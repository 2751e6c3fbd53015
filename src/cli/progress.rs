//! Progress for long jobs: a bar when stdout and stderr are a terminal (indicatif), plain
//! lines otherwise (at most one every five seconds, and one at the end), always on stderr
//! so that stdout stays clean for `--json` and pipes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: &'static str,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = interactive.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(label);
            bar
        });
        Self {
            label,
            bar,
            last_line: Instant::now(),
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => {
                if done == total || self.last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{}: {done}/{total}", self.label);
                    self.last_line = Instant::now();
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
