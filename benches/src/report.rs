//! Turning figures into the markdown tables (comfy-table) and the header that says where, when and
//! how they were measured.

use std::fmt::Write as _;

use comfy_table::Table;
use comfy_table::presets::ASCII_MARKDOWN;
use serde::Serialize;

/// Which way is better for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Better {
    /// Bigger numbers are better (throughput).
    Higher,
    /// Smaller numbers are better (latency, time, size).
    Lower,
    /// Informational: nothing is highlighted and no ratio is given.
    Neither,
}

/// One cell: a figure, not applicable, or the engine failed.
#[derive(Debug, Clone, Serialize)]
pub enum Cell {
    /// A measured figure.
    Num(f64),
    /// Not measured (the engine has no such operation, or the API is not there yet).
    NotApplicable,
    /// The engine failed before this figure.
    Failed,
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Self {
        v.map_or(Cell::NotApplicable, Cell::Num)
    }
}

/// One row of a table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What the row measures, with its unit.
    pub label: String,
    /// Which way is better.
    pub better: Better,
    /// One cell per column.
    pub cells: Vec<Cell>,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// Lines printed under the heading.
    pub notes: Vec<String>,
    /// The column names (after the measure column). The first is squirrel-store.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
    /// Whether to add the "squirrel-store ÷ best peer" column.
    pub ratio: bool,
}

/// Formats a figure with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn value(c: &Cell) -> Option<f64> {
    match c {
        Cell::Num(v) if v.is_finite() => Some(*v),
        _ => None,
    }
}

fn is_best(better: Better, a: f64, b: f64) -> bool {
    match better {
        Better::Higher => a > b,
        Better::Lower => a < b,
        Better::Neither => false,
    }
}

impl Section {
    /// The table as markdown: the best figure of each row in bold, and, when asked, a last
    /// column with squirrel-store's figure divided by the best other column's.
    pub fn markdown(&self) -> String {
        let mut table = Table::new();
        table.load_style(ASCII_MARKDOWN);
        let mut header = vec!["measure".to_owned()];
        header.extend(self.columns.iter().cloned());
        if self.ratio {
            header.push("squirrel-store ÷ best peer".to_owned());
        }
        table.set_header(header);
        for row in &self.rows {
            let mut best: Option<f64> = None;
            for v in row.cells.iter().filter_map(value) {
                if best.is_none_or(|b| is_best(row.better, v, b)) {
                    best = Some(v);
                }
            }
            let mut line = vec![row.label.clone()];
            for c in &row.cells {
                line.push(match c {
                    Cell::Num(v) => {
                        let s = num(*v);
                        if row.better != Better::Neither && Some(*v) == best {
                            format!("**{s}**")
                        } else {
                            s
                        }
                    }
                    Cell::NotApplicable => "n/a".to_owned(),
                    Cell::Failed => "failed".to_owned(),
                });
            }
            if self.ratio {
                let ours = row.cells.first().and_then(value);
                let mut peer_best: Option<f64> = None;
                for v in row.cells.iter().skip(1).filter_map(value) {
                    if peer_best.is_none_or(|b| is_best(row.better, v, b)) {
                        peer_best = Some(v);
                    }
                }
                line.push(match (ours, peer_best, row.better) {
                    (_, _, Better::Neither) => String::new(),
                    (Some(o), Some(p), _) if p != 0.0 => format!("{}×", num(o / p)),
                    _ => "n/a".to_owned(),
                });
            }
            table.add_row(line);
        }
        let mut out = format!("## {}\n\n", self.title);
        for n in &self.notes {
            let _ = writeln!(out, "{n}  ");
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out.push_str(&table.to_string());
        out.push('\n');
        out
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// UTC date and time.
    pub date: String,
    /// Cores, memory, CPU model, kernel.
    pub machine: String,
    /// The exact command line.
    pub command: String,
    /// "quick" or "full".
    pub mode: String,
    /// Wall time of the whole run, seconds.
    pub took_s: f64,
}

impl RunInfo {
    /// Reads the machine description from `/proc` and the clock.
    pub fn collect(quick: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        RunInfo {
            date: utc_now(),
            machine: format!(
                "{cores} cores ({model}), {:.1} GiB memory, Linux {}",
                mem_kib as f64 / (1024.0 * 1024.0),
                kernel.trim()
            ),
            command,
            mode: if quick { "quick" } else { "full" }.to_owned(),
            took_s: 0.0,
        }
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The whole markdown document.
pub fn document(info: &RunInfo, sections: &[Section], svg_name: &str) -> String {
    let mut out = String::from("# squirrel-store benchmark results\n\n");
    let _ = writeln!(out, "- date: {}", info.date);
    let _ = writeln!(out, "- machine: {}", info.machine);
    let _ = writeln!(
        out,
        "- mode: {} (whole run took {:.0} s)",
        info.mode, info.took_s
    );
    let _ = writeln!(out, "- command: `{}`", info.command);
    let _ = writeln!(out, "- plot: [{svg_name}]({svg_name})");
    out.push_str(
        "\nBold: the best figure of the row. ↑ higher is better, ↓ lower is better. \
         The last column is squirrel-store's figure divided by the best peer's \
         (for ↑ rows above 1 means squirrel-store is ahead, for ↓ rows below 1 does). \
         MB = 10^6 bytes of values (keys not counted). Gets and scans are hot (data in the page \
         cache) and read every byte of each value.\n\n",
    );
    for s in sections {
        out.push_str(&s.markdown());
        out.push('\n');
    }
    out
}
