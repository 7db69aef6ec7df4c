//! The live progress display: a bar with ops/s and p99 so far on a terminal; on
//! anything else (a log, CI) one line every ten seconds, so output stays readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, lines otherwise (stderr).
    Auto,
    /// Nothing.
    Quiet,
}

/// Lines go out this often when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// Progress of one phase.
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    phase: &'static str,
    last_line: Instant,
}

/// How far a phase has come.
pub struct Tick {
    /// Position in the bar's unit (operations, or seconds for a timed phase).
    pub position: u64,
    /// Seconds since the phase started.
    pub elapsed_s: f64,
    /// Successful operations per second in the last interval.
    pub throughput: f64,
    /// p99 of everything measured so far, microseconds.
    pub p99_us: u64,
    /// Failed operations so far.
    pub errors: u64,
}

impl Progress {
    /// Starts showing `phase`, whose end is at `length` (operations or seconds, as
    /// `unit` says).
    pub fn start(mode: ProgressMode, phase: &'static str, length: u64, unit: &str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (mode == ProgressMode::Auto && terminal).then(|| {
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:>5}} [{{elapsed_precise}}] {{bar:30.cyan/blue}} {{pos}}/{{len}} {unit} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_prefix(phase);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            lines: mode == ProgressMode::Auto && !terminal,
            phase,
            last_line: Instant::now(),
        }
    }

    /// Shows `tick`.
    pub fn update(&mut self, tick: &Tick) {
        let msg = format!(
            "{:.0} ops/s  p99 {:.2} ms  errors {}",
            tick.throughput,
            tick.p99_us as f64 / 1000.0,
            tick.errors
        );
        if let Some(bar) = &self.bar {
            bar.set_position(tick.position);
            bar.set_message(msg);
        } else if self.lines && self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            eprintln!("{} {:>6.0} s: {msg}", self.phase, tick.elapsed_s);
        }
    }

    /// Stops showing the phase.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
