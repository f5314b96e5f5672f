//! Progress views: plain lines like BuildKit's `--progress=plain`, one JSON event per line, or
//! a live terminal view (steps with their state and timing, the tail of running steps' output).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use kiln_engine::progress::Event;
use tokio::sync::mpsc::UnboundedReceiver;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live view.
    Tty,
    /// Plain lines.
    Plain,
    /// JSON lines.
    Json,
    /// Nothing (`-q`).
    Quiet,
}

/// Consumes events until the channel closes.
pub async fn render(mut rx: UnboundedReceiver<Event>, mode: Mode) {
    match mode {
        Mode::Json => {
            while let Some(e) = rx.recv().await {
                if let Ok(s) = serde_json::to_string(&e) {
                    eprintln!("{s}");
                }
            }
        }
        Mode::Plain => {
            let mut plain = Plain::default();
            while let Some(e) = rx.recv().await {
                plain.event(&e);
            }
        }
        Mode::Tty => tty(rx).await,
        Mode::Quiet => while rx.recv().await.is_some() {},
    }
}

#[derive(Default)]
struct Plain {
    numbers: BTreeMap<usize, usize>,
    started: BTreeMap<usize, Instant>,
    next: usize,
    partial: BTreeMap<(usize, u8), String>,
}

impl Plain {
    fn num(&mut self, v: usize) -> usize {
        let next = &mut self.next;
        *self.numbers.entry(v).or_insert_with(|| {
            *next += 1;
            *next
        })
    }

    fn event(&mut self, e: &Event) {
        let mut err = std::io::stderr().lock();
        match e {
            Event::Started { vertex, name } => {
                let n = self.num(*vertex);
                self.started.insert(*vertex, Instant::now());
                let _ = writeln!(err, "#{n} {name}");
            }
            Event::Cached { vertex, name } => {
                let n = self.num(*vertex);
                let _ = writeln!(err, "#{n} {name}\n#{n} CACHED");
            }
            Event::Log {
                vertex,
                stream,
                data,
            } => {
                let n = self.num(*vertex);
                let t = self
                    .started
                    .get(vertex)
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                let buf = self.partial.entry((*vertex, *stream)).or_default();
                buf.push_str(data);
                while let Some(pos) = buf.find('\n') {
                    let line: String = buf.drain(..=pos).collect();
                    let _ = writeln!(err, "#{n} {t:.3} {}", line.trim_end_matches('\n'));
                }
            }
            Event::Done { vertex, duration } => {
                let n = self.num(*vertex);
                if let Some(rest) = self.partial.remove(&(*vertex, 1)).filter(|s| !s.is_empty()) {
                    let _ = writeln!(err, "#{n} {rest}");
                }
                if let Some(rest) = self.partial.remove(&(*vertex, 2)).filter(|s| !s.is_empty()) {
                    let _ = writeln!(err, "#{n} {rest}");
                }
                let _ = writeln!(err, "#{n} DONE {:.1}s", duration.as_secs_f64());
            }
            Event::Error { vertex, message } => {
                let n = self.num(*vertex);
                let _ = writeln!(err, "#{n} ERROR: {message}");
            }
            Event::Phase { name } => {
                let _ = writeln!(err, "#- {name}");
            }
            Event::Policy { decision } => {
                let _ = writeln!(err, "#- {}", policy_line(decision));
            }
            Event::Confined {
                vertex,
                confinement,
            } if confinement.security == kiln_sandbox::Security::Insecure => {
                let n = self.num(*vertex);
                let _ = writeln!(
                    err,
                    "#{n} WARNING: ran with --security=insecure: every capability, no seccomp allow-list, no landlock"
                );
            }
            _ => {}
        }
    }
}

#[derive(Clone)]
enum State {
    Running(Instant),
    Cached,
    Done(Duration),
    Failed,
}

struct Row {
    name: String,
    state: State,
    tail: Vec<String>,
}

/// The live view: redraws the step list in place ~10 times a second.
async fn tty(mut rx: UnboundedReceiver<Event>) {
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    let mut phase = String::new();
    let start = Instant::now();
    let mut drawn = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            e = rx.recv() => {
                let Some(e) = e else { break };
                match e {
                    Event::Started { vertex, name } => {
                        rows.insert(vertex, Row { name, state: State::Running(Instant::now()), tail: Vec::new() });
                    }
                    Event::Cached { vertex, name } => {
                        rows.insert(vertex, Row { name, state: State::Cached, tail: Vec::new() });
                    }
                    Event::Log { vertex, data, .. } => {
                        if let Some(r) = rows.get_mut(&vertex) {
                            for l in data.lines() {
                                r.tail.push(l.to_owned());
                            }
                            let n = r.tail.len();
                            if n > 6 {
                                r.tail.drain(..n - 6);
                            }
                        }
                    }
                    Event::Done { vertex, duration } => {
                        if let Some(r) = rows.get_mut(&vertex) {
                            r.state = State::Done(duration);
                            r.tail.clear();
                        }
                    }
                    Event::Error { vertex, message } => {
                        if let Some(r) = rows.get_mut(&vertex) {
                            r.state = State::Failed;
                            r.tail.push(message);
                        }
                    }
                    Event::Phase { name } => phase = name,
                    Event::Policy { decision } if !decision.allow => {
                        phase = policy_line(&decision);
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                drawn = draw(&rows, &phase, start, drawn);
            }
        }
    }
    draw(&rows, &phase, start, drawn);
}

fn draw(rows: &BTreeMap<usize, Row>, phase: &str, start: Instant, previous: usize) -> usize {
    let mut out = String::new();
    if previous > 0 {
        out.push_str(&format!("\x1b[{previous}A"));
    }
    let mut lines = vec![format!(
        "[+] Building {:.1}s",
        start.elapsed().as_secs_f64()
    )];
    for r in rows.values() {
        let (mark, time) = match &r.state {
            State::Running(s) => (
                "\x1b[34m=>\x1b[0m",
                format!("{:.1}s", s.elapsed().as_secs_f64()),
            ),
            State::Cached => ("\x1b[32m=>\x1b[0m", "CACHED".to_owned()),
            State::Done(d) => ("\x1b[32m=>\x1b[0m", format!("{:.1}s", d.as_secs_f64())),
            State::Failed => ("\x1b[31m=>\x1b[0m", "ERROR".to_owned()),
        };
        lines.push(format!("{mark} {} {time}", truncate(&r.name, 90)));
        for t in &r.tail {
            lines.push(format!("   \x1b[2m{}\x1b[0m", truncate(t, 100)));
        }
    }
    if !phase.is_empty() {
        lines.push(format!("=> {phase}"));
    }
    for l in &lines {
        out.push_str("\x1b[2K");
        out.push_str(l);
        out.push('\n');
    }
    // Clear lines left over from a taller previous frame.
    for _ in lines.len()..previous {
        out.push_str("\x1b[2K\n");
    }
    let extra = previous.saturating_sub(lines.len());
    if extra > 0 {
        out.push_str(&format!("\x1b[{extra}A"));
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    lines.len()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// One decision, as the plain view prints it:
/// `policy kiln.exec [build 2/3] RUN make: allow (41 µs)`.
fn policy_line(d: &kiln_policy::Decision) -> String {
    let mut line = format!("policy {}", d.gate.package());
    if let Some(s) = &d.subject {
        line.push(' ');
        line.push_str(s);
    }
    line.push_str(if d.allow { ": allow" } else { ": DENY" });
    if let Some(r) = &d.rewrite {
        line.push_str(&format!(" (rewrite to {r})"));
    }
    line.push_str(&format!(" ({} µs)", d.eval_us));
    for m in &d.messages {
        line.push_str(&format!("\n#-   {m}"));
    }
    line
}
