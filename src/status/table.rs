//! [`Status`] as a plain-text table, for logs and terminals.

use std::fmt::{self, Display, Write as _};

use super::{EndpointState, EndpointStatus, Status};

impl Display for Status {
    /// A summary line, one row per tier and one per endpoint, and the
    /// retry counters:
    ///
    /// ```text
    /// service api · strategy p2c_peak_ewma · revision 4 · 3 updates applied, 0 errors
    /// 3 endpoints: 1 healthy, 1 ejected, 1 down · panic mode off · ejections so far: 2, downs: 1
    /// tier  endpoints  in rotation  health  load
    /// 0     2          1            50%     100%
    /// 1     1          1            100%    0%
    /// endpoint  address         tier  weight  state    reason                left   in flight  ok  failed  latency
    /// a         127.0.0.1:8081  0     100     healthy                               0          20  0       1.1 ms
    /// …
    /// retries: 4 of 40 requests · 0 hedges · 0 refused by the budget · 0 past deadline · budget 14.0
    /// ```
    ///
    /// and, when latency histograms sample answers, how many they time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {}", self.service)?;
        if let Some(strategy) = &self.strategy {
            write!(f, " · strategy {strategy}")?;
        }
        let d = &self.discovery;
        write!(
            f,
            " · revision {} · {} updates applied, {} errors",
            self.revision, d.updates_applied, d.errors
        )?;
        if let Some(lag) = d.revision_lag().filter(|l| *l > 0) {
            write!(f, " · {lag} revisions behind the source")?;
        }
        if d.ended {
            f.write_str(" · source ended")?;
        }
        if let Some(e) = &d.last_error {
            write!(f, " · last error: {e}")?;
        }
        writeln!(f)?;

        write!(f, "{} endpoints", self.endpoints.len())?;
        let mut sep = ": ";
        for state in EndpointState::ALL {
            let n = self.count(state);
            if n > 0 {
                write!(f, "{sep}{n} {}", state.as_str().replace('_', " "))?;
                sep = ", ";
            }
        }
        if self.failover {
            let panic = if self.panic { "ON" } else { "off" };
            write!(
                f,
                " · panic mode {panic} · ejections so far: {}, downs: {}",
                self.ejections, self.downs
            )?;
        }
        writeln!(f)?;

        let mut tiers = Table::new(["tier", "endpoints", "in rotation", "health", "load"]);
        for t in &self.tiers {
            tiers.row([
                t.priority.to_string(),
                t.endpoints.to_string(),
                (t.healthy + t.slow_start + t.draining).to_string(),
                format!("{:.0}%", t.health_percent),
                match t.load_percent {
                    _ if self.panic => "panic".into(),
                    Some(l) => format!("{l:.0}%"),
                    None => "-".into(),
                },
            ]);
        }
        tiers.write(f)?;

        let mut endpoints = Table::new([
            "endpoint",
            "address",
            "tier",
            "weight",
            "state",
            "reason",
            "left",
            "in flight",
            "ok",
            "failed",
            "latency",
        ]);
        for e in &self.endpoints {
            endpoints.row(row(e));
        }
        endpoints.write(f)?;

        if let Some(r) = &self.retry {
            writeln!(
                f,
                "retries: {} of {} requests · {} hedges · {} refused by the budget · {} past deadline · budget {:.1}",
                r.retries,
                r.requests,
                r.hedges,
                r.budget_exhausted,
                r.deadlines_exceeded,
                r.budget_available
            )?;
        }
        if let Some(n) = self.latency_one_in.filter(|n| *n > 1) {
            writeln!(
                f,
                "latency histograms: 1 answer in {n} timed, each counted {n} times"
            )?;
        }
        Ok(())
    }
}

fn row(e: &EndpointStatus) -> [String; 11] {
    [
        e.key.clone(),
        // Blank when the key is the address, as for `Endpoint::new`.
        match &e.address {
            Some(a) if *a == e.key => String::new(),
            Some(a) => a.clone(),
            None => "-".into(),
        },
        e.priority.to_string(),
        e.weight.to_string(),
        e.state.as_str().replace('_', " "),
        e.reason.clone().unwrap_or_default(),
        e.time_left_ms.map_or(String::new(), seconds),
        e.in_flight.to_string(),
        e.successes.to_string(),
        e.failures.to_string(),
        e.latency_ms
            .map_or(String::new(), |ms| format!("{ms:.1} ms")),
    ]
}

/// `1234` → `1.2 s`.
fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1e3)
}

/// Left-aligned columns two spaces apart, as wide as their widest cell.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&str; N]) -> Self {
        Table {
            rows: vec![header.map(str::to_owned)],
        }
    }

    fn row(&mut self, row: [String; N]) {
        self.rows.push(row);
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths = [0; N];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = String::new();
        for row in &self.rows {
            line.clear();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 < N {
                    let _ = write!(line, "{cell:w$}  ");
                } else {
                    line.push_str(cell);
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
