//! `keyrelay status` on a terminal: the table redrawn in place on the
//! alternate screen, every second (countdowns) and read again every
//! interval, until `q`, Esc or Ctrl-C, or SIGTERM, SIGHUP or SIGINT from
//! outside. The terminal is restored however the loop ends, a panic
//! included.

use std::{
    io::{self, Write},
    time::Duration,
};

use crossterm::{
    cursor::{Hide, MoveTo, Show},
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, queue,
    style::Print,
    terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen},
};

use tokio::time::Instant;

use super::{
    fetch::{PoolView, Source},
    table::render,
};

/// How often the countdowns are redrawn between reads.
const TICK: Duration = Duration::from_secs(1);
/// The longest wait for a key press before signals are looked at.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// Raw mode, the alternate screen and a hidden cursor, undone on drop.
struct Screen;

impl Screen {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        // From here on, a failure must still restore raw mode: the guard exists.
        let screen = Self;
        execute!(io::stdout(), EnterAlternateScreen, Hide)?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// Runs the live table, starting from `view` (just read), until the
/// operator quits.
pub fn run(runtime: &tokio::runtime::Runtime, source: &Source, view: PoolView, interval: Duration) -> io::Result<()> {
    let mut signals = Signals::new(runtime)?;
    let _screen = Screen::enter()?;
    let (mut view, mut read_at, mut failure) = (view, Instant::now(), None::<String>);
    let mut next_read = read_at + interval;
    let mut next_tick = Instant::now();
    loop {
        if Instant::now() >= next_tick {
            draw(&render(&view, source.url(), read_at.elapsed()), failure.as_deref(), interval)?;
            next_tick = Instant::now() + TICK;
        }
        let wait = next_tick.min(next_read).saturating_duration_since(Instant::now()).min(SIGNAL_CHECK);
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if quits(&key) => return Ok(()),
                // A resize or any other key: redraw now.
                _ => {
                    next_tick = Instant::now();
                    continue;
                }
            }
        }
        if signals.received(runtime) {
            return Ok(());
        }
        if Instant::now() >= next_read {
            match runtime.block_on(source.fetch()) {
                Ok(fresh) => (view, read_at, failure) = (fresh, Instant::now(), None),
                // Keep the last table, and say that it is getting old.
                Err(message) => failure = Some(message),
            }
            next_read = Instant::now() + interval;
        }
    }
}

/// SIGTERM, SIGHUP and SIGINT (raw mode turns Ctrl-C into a key, but a
/// `kill` still comes as a signal): each ends the loop, so that the
/// terminal is restored.
struct Signals([tokio::signal::unix::Signal; 3]);

impl Signals {
    fn new(runtime: &tokio::runtime::Runtime) -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        Ok(Self([signal(SignalKind::terminate())?, signal(SignalKind::hangup())?, signal(SignalKind::interrupt())?]))
    }

    /// Whether one came; the runtime runs briefly to hear it.
    fn received(&mut self, runtime: &tokio::runtime::Runtime) -> bool {
        let [term, hup, int] = &mut self.0;
        runtime.block_on(async {
            let any = async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                    _ = int.recv() => {}
                }
            };
            tokio::time::timeout(Duration::from_millis(1), any).await.is_ok()
        })
    }
}

fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The lines cut to the terminal's width and height, then the footer.
fn draw(lines: &[String], failure: Option<&str>, interval: Duration) -> io::Result<()> {
    // A terminal that does not know its size (a fresh pty says 0x0) gets
    // the classic one.
    let (width, height) = match terminal::size() {
        Ok((width, height)) if width > 0 && height > 1 => (usize::from(width), usize::from(height)),
        _ => (80, 24),
    };
    let mut footer = format!("refreshing every {}s; q to quit", interval.as_secs());
    if let Some(failure) = failure {
        footer = format!("{footer}; last read failed: {failure}");
    }
    let room = height - 1;
    let mut shown: Vec<String> = lines.iter().take(room).cloned().collect();
    if lines.len() > room {
        let hidden = lines.len() - room + 1;
        shown.pop();
        shown.push(format!("... {hidden} more (a taller terminal shows them)"));
    }
    let mut out = io::stdout().lock();
    queue!(out, MoveTo(0, 0), Clear(ClearType::All))?;
    for (row, line) in shown.iter().chain([&footer]).enumerate() {
        let row = u16::try_from(row).unwrap_or(u16::MAX);
        queue!(out, MoveTo(0, row), Print(cut(line, width)))?;
    }
    out.flush()
}

fn cut(line: &str, width: usize) -> &str {
    match line.char_indices().nth(width) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}
