//! Progress of a long command (`rotate --all`, `audit`, `import`) on stderr: a
//! bar on a terminal (indicatif), plain lines otherwise — at most one per
//! tenth of the work and the last one, so a log or a CI transcript stays short.
//! Results still go to stdout; progress never does.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    /// `rotate`, `audit`, `import`: starts each plain line.
    what: &'static str,
    /// `account`, `database`, `role`: what is counted.
    unit: &'static str,
    total: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
    shown: Shown,
}

enum Shown {
    Bar(ProgressBar),
    /// The last tenth a plain line was printed for.
    Lines(Mutex<usize>),
    Hidden,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines when it is not.
    pub fn new(what: &'static str, unit: &'static str, total: usize) -> Progress {
        let shown = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ~{eta} left)",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            Shown::Bar(bar)
        } else {
            Shown::Lines(Mutex::new(0))
        };
        Progress::with(what, unit, total, shown)
    }

    /// Shows nothing (the daemon's own audits).
    pub fn hidden() -> Progress {
        Progress::with("", "", 0, Shown::Hidden)
    }

    fn with(what: &'static str, unit: &'static str, total: usize, shown: Shown) -> Progress {
        Progress {
            what,
            unit,
            total,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            shown,
        }
    }

    /// One item finished (`ok: false` counts it as failed).
    pub fn item_done(&self, ok: bool) {
        // Failures are counted before the item, so that whoever counts the
        // last item sees every failure.
        if !ok {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let failed = self.failed.load(Ordering::SeqCst);
        match &self.shown {
            Shown::Bar(bar) => {
                bar.inc(1);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
            Shown::Lines(last) => {
                if let Some(line) = self.plain_line(done, failed, last) {
                    eprintln!("{line}");
                }
            }
            Shown::Hidden => {}
        }
    }

    /// The plain line for `done` items, if a new tenth of the work (or the
    /// end) was reached since the last one printed.
    fn plain_line(&self, done: usize, failed: usize, last: &Mutex<usize>) -> Option<String> {
        if self.total < 2 {
            return None;
        }
        let tenth = done * 10 / self.total;
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if tenth <= *last && done != self.total {
            return None;
        }
        *last = tenth;
        let failed = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        Some(format!(
            "{}: {done}/{} {}s done{failed}",
            self.what, self.total, self.unit
        ))
    }

    /// Removes the bar (the summary that follows says how it went).
    pub fn finish(&self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(total: usize, outcomes: &[bool]) -> Vec<String> {
        let p = Progress::with("rotate", "account", total, Shown::Lines(Mutex::new(0)));
        let last = Mutex::new(0);
        let mut failed = 0;
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, ok)| {
                failed += usize::from(!ok);
                p.plain_line(i + 1, failed, &last)
            })
            .collect()
    }

    #[test]
    fn plain_lines_come_once_per_tenth_and_at_the_end() {
        let got = lines(1000, &[true; 1000]);
        assert_eq!(got.len(), 10, "{got:?}");
        assert_eq!(got[0], "rotate: 100/1000 accounts done");
        assert_eq!(got[9], "rotate: 1000/1000 accounts done");
    }

    #[test]
    fn a_short_run_prints_each_step_it_crosses_and_counts_failures() {
        let got = lines(3, &[true, false, true]);
        assert_eq!(
            got,
            [
                "rotate: 1/3 accounts done",
                "rotate: 2/3 accounts done, 1 failed",
                "rotate: 3/3 accounts done, 1 failed"
            ]
        );
        // One item: the summary line says it all.
        assert!(lines(1, &[true]).is_empty());
    }
}
