//! The progress bar of `keyrelay check`: one line on stderr, redrawn with
//! `\r`, only when stderr is a terminal (a log or a pipe gets nothing).

use std::io::{IsTerminal, Write};

const WIDTH: usize = 20;

/// `[#######-------------] 7/20 keys`, drawn after every finished check.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    shown: bool,
}

impl Progress {
    /// A bar over `total` keys, drawn at once when stderr is a terminal.
    pub fn start(total: usize) -> Self {
        let progress = Self { total, done: 0, shown: std::io::stderr().is_terminal() };
        progress.draw();
        progress
    }

    /// One more key checked.
    pub fn tick(&mut self) {
        self.done += 1;
        self.draw();
    }

    /// Clears the line, so the table starts on a clean terminal.
    pub fn finish(self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K").and_then(|()| err.flush());
        }
    }

    fn draw(&self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", bar(self.done, self.total)).and_then(|()| err.flush());
        }
    }
}

fn bar(done: usize, total: usize) -> String {
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}] {done}/{total} keys", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(super::bar(0, 4), "[--------------------] 0/4 keys");
        assert_eq!(super::bar(1, 4), "[#####---------------] 1/4 keys");
        assert_eq!(super::bar(4, 4), "[####################] 4/4 keys");
    }
}
