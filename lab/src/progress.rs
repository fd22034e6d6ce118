//! Progress for the slow steps: a live bar or spinner on a terminal, and one
//! plain line per finished step elsewhere (CI logs), each with its duration.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One long step of a command.
#[derive(Clone)]
pub struct Step {
    bar: ProgressBar,
    label: String,
    started: Instant,
}

impl Step {
    fn new(label: String, bar: ProgressBar, template: &str) -> Step {
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            eprintln!("... {label}");
        }
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        Step {
            bar,
            label,
            started: Instant::now(),
        }
    }

    /// A step of unknown length whose message changes (debootstrap's lines).
    pub fn spinner(label: impl Into<String>) -> Step {
        Step::new(
            label.into(),
            ProgressBar::new_spinner(),
            "{spinner} {prefix} [{elapsed}] {wide_msg}",
        )
    }

    /// A step that moves bytes of unknown total.
    pub fn bytes(label: impl Into<String>) -> Step {
        Step::new(
            label.into(),
            ProgressBar::new_spinner(),
            "{spinner} {prefix} [{elapsed}] {bytes} ({bytes_per_sec})",
        )
    }

    /// A step that counts `total` things (devices whose engine answered).
    pub fn count(label: impl Into<String>, total: u64) -> Step {
        Step::new(
            label.into(),
            ProgressBar::new(total),
            "{spinner} {prefix} [{elapsed}] {bar:30} {pos}/{len} {wide_msg}",
        )
    }

    pub fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    pub fn set(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
        eprintln!(
            "✓ {} ({:.1}s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn fail(&self) {
        self.bar.finish_and_clear();
        eprintln!(
            "✗ {} ({:.1}s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}
