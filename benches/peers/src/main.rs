//! `lb-table`: prints the criterion results of the tower-lb benches as one
//! markdown table — each of our rows beside its peer, the ratio, and the
//! target the ratio is held to.
//!
//! ```sh
//! cargo bench --bench pick --bench roundtrip --bench update --bench contention
//! cargo bench --manifest-path benches/peers/Cargo.toml
//! cargo run --manifest-path benches/peers/Cargo.toml --bin lb-table [-- --summary]
//! ```
//!
//! It reads the mean of every `new/estimates.json` under the main crate's
//! `target/criterion` and under `benches/peers/target/criterion` (the
//! pingora benches), or under the directories given as
//! `--main DIR` / `--peers DIR`. Rows are paired within one tree, so each
//! ratio comes out of one run (a ratio whose rows were measured more than
//! an hour apart is marked †). A `paired` row measured its ratio itself,
//! against its peer in one loop; where one was measured, it holds the
//! target, and the same ratio from two rows timed apart is only shown.
//! `--summary` prints one line per comparison
//! with the ratio at each N in its own column instead. Building it needs
//! only `serde_json`: the benches' heavy dependencies are dev-dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// One benchmark: group, implementation, parameter (the endpoint count).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Id {
    group: String,
    name: String,
    n: String,
}

/// One benchmark's result.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measured {
    /// Mean time per iteration, in nanoseconds; for a `paired` row, the
    /// mean ratio to its base (the row measured that, not a time).
    mean: f64,
    /// When it was measured (the estimates file's modification time).
    when: Option<SystemTime>,
}

impl From<f64> for Measured {
    fn from(mean: f64) -> Self {
        Measured { mean, when: None }
    }
}

/// Results by id.
type Results = BTreeMap<Id, Measured>;

/// Two results further apart than this came from different runs; their
/// ratio is marked.
const SAME_RUN: Duration = Duration::from_secs(3600);

/// Reads every benchmark under `dir` (criterion's output directory).
fn load(dir: &Path) -> Results {
    let mut out = Results::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|f| f == "new") {
                if let Some((id, mean)) = read_one(&path) {
                    out.insert(id, mean);
                }
            } else if path
                .file_name()
                .is_some_and(|f| f != "report" && f != "base")
            {
                stack.push(path);
            }
        }
    }
    out
}

/// The id and mean of the benchmark whose `new/` directory this is.
fn read_one(new: &Path) -> Option<(Id, Measured)> {
    let json = |file: &str| -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(new.join(file)).ok()?;
        serde_json::from_str(&text).ok()
    };
    let bench = json("benchmark.json")?;
    let estimates = json("estimates.json")?;
    let field = |k: &str| bench.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let id = Id {
        group: field("group_id")?,
        name: field("function_id").unwrap_or_default(),
        n: field("value_str").unwrap_or_default(),
    };
    let mean = estimates.get("mean")?.get("point_estimate")?.as_f64()?;
    let when = std::fs::metadata(new.join("estimates.json"))
        .and_then(|m| m.modified())
        .ok();
    Some((id, Measured { mean, when }))
}

/// A line of the table: our row against its peer.
struct Line {
    question: &'static str,
    ours: Id,
    peer: Id,
    /// The ratio ours / peer must not exceed.
    target: Option<f64>,
}

/// The peer a `roundtrip` row is compared with, and the target.
fn roundtrip_peer(name: &str) -> Option<(&'static str, Option<f64>)> {
    if name == "raw"
        || name.starts_with("tower_")
        || name.starts_with("noop_layer")
        || name.ends_with("_control")
    {
        return None;
    }
    let peer = if name.contains("peak_ewma") {
        "tower_p2c_peak_ewma"
    } else {
        "tower_p2c_pending"
    };
    let target = match name {
        "least_in_flight" => Some(0.25),
        "peak_ewma" => Some(0.15),
        "full_stack" | "full_stack_peak_ewma" => Some(0.5),
        _ => None,
    };
    Some((peer, target))
}

/// The plain balancer a row with a layer on top is compared with (the
/// same stack without the layer), and the target: `Retry` is held to
/// 1.15×; tower's `Retry`, the layer that does nothing and the control
/// (the same work as the plain balancer) are yardsticks, with none.
fn layer_base(name: &str) -> Option<(&'static str, Option<f64>)> {
    match name {
        "retry_least_in_flight" => Some(("least_in_flight", Some(1.15))),
        "full_stack" => Some(("failover_least_in_flight", Some(1.15))),
        "noop_layer_least_in_flight"
        | "arc_layer_least_in_flight"
        | "least_in_flight_control"
        | "tower_retry_least_in_flight" => Some(("least_in_flight", None)),
        _ => None,
    }
}

/// Whether a line's value is a ratio measured as such (a `paired` row,
/// timed against its base in one loop) rather than two times.
fn is_paired(id: &Id) -> bool {
    id.group == "paired"
}

/// The strategies held to "≤ 3× the floor", "≤ 0.1× pingora" and "flat in N".
fn cheap_pick(name: &str) -> bool {
    matches!(
        name.trim_end_matches("_weighted"),
        "round_robin" | "weighted_round_robin" | "weighted_random"
    )
}

/// The pingora row a row of ours in the peers tree is compared with.
fn pingora_peer(name: &str) -> Option<&'static str> {
    let base = name.trim_end_matches("_weighted");
    Some(match (name.starts_with("pingora_"), base) {
        (true, _) | (_, "floor") => return None,
        (_, "round_robin" | "weighted_round_robin") => "pingora_round_robin",
        (_, "random" | "weighted_random") => "pingora_random",
        (_, "ring" | "ketama" | "maglev" | "rendezvous") => "pingora_consistent",
        _ => return None,
    })
}

fn with_name(id: &Id, name: &str) -> Id {
    Id {
        name: name.to_owned(),
        ..id.clone()
    }
}

/// Pairs the rows of the main crate's benches.
fn main_lines(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for id in r.keys() {
        let name = id.name.as_str();
        // A ratio timed in one loop holds the target in place of the same
        // ratio from two rows timed apart, which are then only shown: on
        // a busy machine those drift apart by more than a target's margin
        // (the control rows show how far).
        let paired = Id {
            group: "paired".to_owned(),
            ..id.clone()
        };
        let held_paired = |base: &str| {
            r.contains_key(&paired) && layer_base(name).is_some_and(|(b, _)| b == base)
        };
        match id.group.as_str() {
            "roundtrip" => {
                if let Some((peer, target)) = roundtrip_peer(name) {
                    lines.push(Line {
                        question: "roundtrip vs tower",
                        ours: id.clone(),
                        peer: with_name(id, peer),
                        target,
                    });
                }
                if name == "retry_least_in_flight" {
                    lines.push(Line {
                        question: "retry vs tower retry",
                        ours: id.clone(),
                        peer: with_name(id, "tower_retry_least_in_flight"),
                        target: None,
                    });
                }
                // tower's Retry has a line of its own, against ours.
                if let Some((base, target)) =
                    layer_base(name).filter(|_| name != "tower_retry_least_in_flight")
                {
                    lines.push(Line {
                        question: "retry vs balance",
                        ours: id.clone(),
                        peer: with_name(id, base),
                        target: target.filter(|_| !held_paired(base)),
                    });
                }
            }
            // The value is already the ratio to the base, timed in the
            // same loop: the line pairs the row with itself.
            "paired" => {
                if let Some((_, target)) = layer_base(name) {
                    lines.push(Line {
                        question: "retry vs balance, same loop",
                        ours: id.clone(),
                        peer: id.clone(),
                        target,
                    });
                }
            }
            "pick" if name != "floor" => lines.push(Line {
                question: "pick vs floor",
                ours: id.clone(),
                peer: with_name(id, "floor"),
                target: cheap_pick(name).then_some(3.0),
            }),
            // Hash table builds (`*_build`) are not a discovery update:
            // no peer row to hold them against here.
            "update" if !name.starts_with("tower_") && !name.ends_with("_build") => {
                lines.push(Line {
                    question: "update vs tower",
                    ours: id.clone(),
                    peer: with_name(id, "tower_p2c_rebuild"),
                    target: (name == "lb_channel_publish" && id.n == "1000").then_some(0.25),
                })
            }
            "contention" => {
                if let Some(base) = name.strip_suffix("_2_threads") {
                    lines.push(Line {
                        question: "2 threads vs 1",
                        ours: id.clone(),
                        peer: with_name(id, base),
                        // Held for picks; a round trip also counts the
                        // request in flight on the endpoint, a line the
                        // other thread reads and writes: shown, not held.
                        target: (base != "floor" && !base.starts_with("roundtrip_")).then_some(1.5),
                    });
                }
                // Retry over Balance against Balance, each thread with
                // its own clone.
                if let Some(rest) = name.strip_prefix("roundtrip_retry_") {
                    lines.push(Line {
                        question: "retry vs balance",
                        ours: id.clone(),
                        peer: with_name(id, &format!("roundtrip_{rest}")),
                        target: Some(1.15),
                    });
                }
            }
            _ => {}
        }
    }
    // Flat in N: each pick at the largest N against the same at N = 10.
    for id in r
        .keys()
        .filter(|id| id.group == "pick" && id.name != "floor")
    {
        if id.n == "10000" {
            lines.push(Line {
                question: "pick N=10000 vs N=10",
                ours: id.clone(),
                peer: Id {
                    n: "10".to_owned(),
                    ..id.clone()
                },
                target: cheap_pick(&id.name).then_some(1.2),
            });
        }
    }
    lines
}

/// Pairs the rows of the pingora benches.
fn peer_lines(r: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    for id in r.keys() {
        let name = id.name.as_str();
        match id.group.as_str() {
            "pick" => {
                if let Some(peer) = pingora_peer(name) {
                    lines.push(Line {
                        question: "pick vs pingora",
                        ours: id.clone(),
                        peer: with_name(id, peer),
                        target: cheap_pick(name).then_some(0.1),
                    });
                }
            }
            "update" if !name.starts_with("pingora_") => lines.push(Line {
                question: "update vs pingora",
                ours: id.clone(),
                peer: with_name(id, "pingora_update"),
                target: None,
            }),
            _ => {}
        }
    }
    lines
}

/// A duration in nanoseconds, in the unit that suits it.
fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn n_order(n: &str) -> u64 {
    n.parse().unwrap_or(u64::MAX)
}

/// A line whose two rows were both measured.
struct Pair<'a> {
    line: &'a Line,
    ours: Measured,
    peer: Measured,
}

impl Pair<'_> {
    fn ratio(&self) -> f64 {
        if is_paired(&self.line.ours) {
            self.ours.mean
        } else {
            self.ours.mean / self.peer.mean
        }
    }

    fn met(&self) -> Option<bool> {
        self.line.target.map(|t| self.ratio() <= t)
    }

    /// Whether the two rows come from runs far apart.
    fn apart(&self) -> bool {
        match (self.ours.when, self.peer.when) {
            (Some(a), Some(b)) => {
                let gap = a.duration_since(b).or_else(|_| b.duration_since(a));
                gap.is_ok_and(|d| d > SAME_RUN)
            }
            _ => false,
        }
    }
}

/// How many targets were met and how many missed.
fn targets(pairs: &[Pair<'_>]) -> (usize, usize) {
    let met = pairs.iter().filter(|p| p.met() == Some(true)).count();
    let missed = pairs.iter().filter(|p| p.met() == Some(false)).count();
    (met, missed)
}

/// The lines whose two rows were both measured, in order.
fn pairs<'a>(lines: &'a [(Line, &Results)]) -> Vec<Pair<'a>> {
    lines
        .iter()
        .filter_map(|(line, results)| {
            Some(Pair {
                line,
                ours: *results.get(&line.ours)?,
                peer: *results.get(&line.peer)?,
            })
        })
        .collect()
}

fn peer_name(line: &Line) -> String {
    if is_paired(&line.ours) {
        let base = layer_base(&line.ours.name).map_or("?", |(b, _)| b);
        format!("{base}, same loop")
    } else if line.peer.name == line.ours.name {
        format!("same, N={}", line.peer.n)
    } else {
        line.peer.name.clone()
    }
}

/// A row's time, or a dash for a paired row (it measured a ratio).
fn time_cell(pair: &Pair<'_>, m: Measured) -> String {
    if is_paired(&pair.line.ours) {
        "–".to_owned()
    } else {
        human(m.mean)
    }
}

fn ratio_cell(pair: &Pair<'_>) -> String {
    let mark = if pair.apart() { " †" } else { "" };
    format!("{:.3}×{mark}", pair.ratio())
}

/// Every pair, one line each.
fn table(pairs: &[Pair<'_>]) -> String {
    let mut out = String::from(
        "| question | ours | peer | N | ours (mean) | peer (mean) | ratio | target |\n\
         |---|---|---|---:|---:|---:|---:|---|\n",
    );
    for pair in pairs {
        let target = match (pair.line.target, pair.met()) {
            (Some(t), Some(true)) => format!("≤ {t}× met"),
            (Some(t), _) => format!("≤ {t}× **missed**"),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            pair.line.question,
            pair.line.ours.name,
            peer_name(pair.line),
            pair.line.ours.n,
            time_cell(pair, pair.ours),
            time_cell(pair, pair.peer),
            ratio_cell(pair),
            target
        );
    }
    out
}

/// One line per comparison, the ratio at each N in its own column.
fn summary(pairs: &[Pair<'_>]) -> String {
    const NS: [&str; 4] = ["10", "100", "1000", "10000"];
    let mut out = String::from(
        "| question | ours | peer | N=10 | N=100 | N=1000 | N=10000 | target |\n\
         |---|---|---|---:|---:|---:|---:|---|\n",
    );
    let mut rest = pairs;
    while let Some(first) = rest.first() {
        let same = |p: &Pair<'_>| {
            p.line.question == first.line.question
                && p.line.ours.name == first.line.ours.name
                && p.line.peer.name == first.line.peer.name
        };
        let len = rest.iter().take_while(|p| same(p)).count();
        let (row, tail) = rest.split_at(len);
        rest = tail;
        let cells: Vec<String> = NS
            .iter()
            .map(|n| {
                row.iter()
                    .find(|p| p.line.ours.n == *n)
                    .map(ratio_cell)
                    .unwrap_or_default()
            })
            .collect();
        let held: Vec<&Pair<'_>> = row.iter().filter(|p| p.line.target.is_some()).collect();
        let target = match held.first().and_then(|p| p.line.target) {
            None => String::new(),
            Some(t) => {
                let missed: Vec<&str> = held
                    .iter()
                    .filter(|p| p.met() == Some(false))
                    .map(|p| p.line.ours.n.as_str())
                    .collect();
                if missed.is_empty() {
                    format!("≤ {t}× met")
                } else {
                    format!("≤ {t}× **missed** (N={})", missed.join(", "))
                }
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            first.line.question,
            first.line.ours.name,
            peer_name(first.line),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            target
        );
    }
    out
}

/// Questions in the order the table shows them; each question's lines by
/// our row, then its peer, then N, so that a question's lines for one row
/// sit together (the summary folds them into one line).
fn sort_lines(lines: &mut [(Line, &Results)]) {
    const ORDER: [&str; 10] = [
        "roundtrip vs tower",
        "retry vs balance, same loop",
        "retry vs balance",
        "retry vs tower retry",
        "pick vs floor",
        "pick N=10000 vs N=10",
        "pick vs pingora",
        "update vs tower",
        "update vs pingora",
        "2 threads vs 1",
    ];
    let order = |q: &str| ORDER.iter().position(|x| *x == q).unwrap_or(usize::MAX);
    lines.sort_by(|(a, _), (b, _)| {
        (
            order(a.question),
            a.question,
            &a.ours.name,
            &a.peer.name,
            n_order(&a.ours.n),
        )
            .cmp(&(
                order(b.question),
                b.question,
                &b.ours.name,
                &b.peer.name,
                n_order(&b.ours.n),
            ))
    });
}

/// The repository root: two levels above this crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> ExitCode {
    let mut main_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("criterion"))
        .unwrap_or_else(|| root().join("target/criterion"));
    let mut peers_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    let mut compact = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--main" => &mut main_dir,
            "--peers" => &mut peers_dir,
            "--summary" => {
                compact = true;
                continue;
            }
            _ => {
                eprintln!("usage: lb-table [--summary] [--main DIR] [--peers DIR]");
                return ExitCode::FAILURE;
            }
        };
        match args.next() {
            Some(dir) => *slot = PathBuf::from(dir),
            None => {
                eprintln!("{arg} needs a directory");
                return ExitCode::FAILURE;
            }
        }
    }
    let main_results = load(&main_dir);
    let peer_results = load(&peers_dir);
    if main_results.is_empty() && peer_results.is_empty() {
        eprintln!(
            "no criterion results under {} or {}: run the benches first",
            main_dir.display(),
            peers_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let mut lines: Vec<(Line, &Results)> = main_lines(&main_results)
        .into_iter()
        .map(|l| (l, &main_results))
        .chain(
            peer_lines(&peer_results)
                .into_iter()
                .map(|l| (l, &peer_results)),
        )
        .collect();
    sort_lines(&mut lines);
    let pairs = pairs(&lines);
    print!(
        "{}",
        if compact {
            summary(&pairs)
        } else {
            table(&pairs)
        }
    );
    let (met, missed) = targets(&pairs);
    println!(
        "\nRatio = ours / peer, from mean times (a same-loop row measured the ratio itself). \
         Targets: {met} met, {missed} missed."
    );
    if pairs.iter().any(Pair::apart) {
        println!("† the two rows were measured more than an hour apart.");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(group: &str, name: &str, n: &str) -> Id {
        Id {
            group: group.to_owned(),
            name: name.to_owned(),
            n: n.to_owned(),
        }
    }

    /// `roundtrip` rows: each named row with its mean, at each N.
    fn roundtrip_rows(ns: &[&str], rows: &[(&str, f64)]) -> Results {
        let mut results = Results::new();
        for n in ns {
            for &(name, mean) in rows {
                results.insert(id("roundtrip", name, n), mean.into());
            }
        }
        results
    }

    /// Writes one benchmark in criterion's layout under `dir`.
    fn write_bench(dir: &Path, id: &Id, mean: f64) {
        let new = dir.join(&id.group).join(&id.name).join(&id.n).join("new");
        std::fs::create_dir_all(&new).unwrap();
        let bench = serde_json::json!({
            "group_id": id.group, "function_id": id.name, "value_str": id.n,
        });
        let estimates = serde_json::json!({
            "mean": { "point_estimate": mean, "standard_error": 1.0 },
        });
        std::fs::write(new.join("benchmark.json"), bench.to_string()).unwrap();
        std::fs::write(new.join("estimates.json"), estimates.to_string()).unwrap();
    }

    #[test]
    fn reads_criterion_output_and_pairs_rows() {
        let dir = std::env::temp_dir().join(format!("lb-table-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_bench(&dir, &id("roundtrip", "least_in_flight", "100"), 50.0);
        write_bench(&dir, &id("roundtrip", "tower_p2c_pending", "100"), 400.0);
        write_bench(&dir, &id("roundtrip", "peak_ewma", "100"), 90.0);
        write_bench(&dir, &id("roundtrip", "tower_p2c_peak_ewma", "100"), 500.0);
        write_bench(&dir, &id("roundtrip", "raw", "100"), 2.0);
        // A `base/` copy from an earlier run is not read.
        let base = dir.join("roundtrip/raw/100/base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("estimates.json"), "{}").unwrap();

        let results = load(&dir);
        assert_eq!(results.len(), 5);
        let raw = results[&id("roundtrip", "raw", "100")];
        assert_eq!(raw.mean, 2.0);
        assert!(raw.when.is_some(), "the file's time is read");

        let lines: Vec<_> = main_lines(&results)
            .into_iter()
            .map(|l| (l, &results))
            .collect();
        // Two of ours, each against its tower peer; raw and tower have none.
        assert_eq!(lines.len(), 2);
        let pairs = pairs(&lines);
        let text = table(&pairs);
        // 50 / 400 = 0.125 ≤ 0.25; 90 / 500 = 0.18 > 0.15.
        let met: Vec<_> = pairs.iter().map(Pair::met).collect();
        assert_eq!(met, [Some(true), Some(false)], "{text}");
        assert!(!pairs.iter().any(Pair::apart), "measured together");
        assert!(text.contains("| least_in_flight | tower_p2c_pending | 100 | 50.0 ns | 400.0 ns | 0.125× | ≤ 0.25× met |"), "{text}");
        assert!(text.contains("| peak_ewma | tower_p2c_peak_ewma | 100 | 90.0 ns | 500.0 ns | 0.180× | ≤ 0.15× **missed** |"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retry_rows_are_held_against_the_stack_without_retry() {
        let mut results = Results::new();
        for (name, mean) in [
            ("least_in_flight", 50.0),
            ("retry_least_in_flight", 60.0),
            ("noop_layer_least_in_flight", 56.0),
            ("least_in_flight_control", 51.0),
            ("failover_least_in_flight", 50.0),
            ("full_stack", 55.0),
        ] {
            results.insert(id("roundtrip", name, "100"), mean.into());
        }
        for (name, mean) in [
            ("roundtrip_least_in_flight_2_threads", 70.0),
            ("roundtrip_retry_least_in_flight_2_threads", 77.0),
        ] {
            results.insert(id("contention", name, "100"), mean.into());
        }
        let lines: Vec<_> = main_lines(&results)
            .into_iter()
            .filter(|l| l.question == "retry vs balance")
            .map(|l| (l, &results))
            .collect();
        let pairs = pairs(&lines);
        let got: Vec<_> = pairs
            .iter()
            .map(|p| {
                (
                    p.line.ours.name.as_str(),
                    p.line.peer.name.as_str(),
                    p.met(),
                )
            })
            .collect();
        // 77 / 70 = 1.1 ≤ 1.15; 55 / 50 = 1.1 ≤ 1.15; the no-op layer
        // has no target; 60 / 50 = 1.2 > 1.15.
        assert_eq!(
            got,
            [
                (
                    "roundtrip_retry_least_in_flight_2_threads",
                    "roundtrip_least_in_flight_2_threads",
                    Some(true)
                ),
                ("full_stack", "failover_least_in_flight", Some(true)),
                ("least_in_flight_control", "least_in_flight", None),
                ("noop_layer_least_in_flight", "least_in_flight", None),
                ("retry_least_in_flight", "least_in_flight", Some(false)),
            ]
        );
        assert!(
            !main_lines(&results)
                .iter()
                .any(|l| l.question == "roundtrip vs tower"
                    && (l.ours.name.starts_with("noop") || l.ours.name.ends_with("_control"))),
            "the no-op layer and the control are not held against tower"
        );
    }

    #[test]
    fn paired_rows_are_ratios_held_as_they_are() {
        let mut results = Results::new();
        for (name, ratio) in [
            ("least_in_flight_control", 1.004),
            ("retry_least_in_flight", 1.12),
            ("noop_layer_least_in_flight", 1.05),
            ("tower_retry_least_in_flight", 1.6),
            ("full_stack", 1.2),
        ] {
            results.insert(id("paired", name, "100"), ratio.into());
        }
        let mut lines: Vec<_> = main_lines(&results)
            .into_iter()
            .map(|l| (l, &results))
            .collect();
        assert!(
            lines
                .iter()
                .all(|(l, _)| l.question == "retry vs balance, same loop"),
            "paired rows are compared with nothing else"
        );
        sort_lines(&mut lines);
        let pairs = pairs(&lines);
        let got: Vec<_> = pairs
            .iter()
            .map(|p| (p.line.ours.name.as_str(), p.ratio(), p.met()))
            .collect();
        // The value is the ratio: 1.12 ≤ 1.15, 1.2 > 1.15; the yardsticks
        // have no target.
        assert_eq!(
            got,
            [
                ("full_stack", 1.2, Some(false)),
                ("least_in_flight_control", 1.004, None),
                ("noop_layer_least_in_flight", 1.05, None),
                ("retry_least_in_flight", 1.12, Some(true)),
                ("tower_retry_least_in_flight", 1.6, None),
            ]
        );
        let text = table(&pairs);
        assert!(
            text.contains(
                "| retry vs balance, same loop | retry_least_in_flight | \
                 least_in_flight, same loop | 100 | – | – | 1.120× | ≤ 1.15× met |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| full_stack | failover_least_in_flight, same loop | 100 |"),
            "{text}"
        );
    }

    #[test]
    fn a_paired_row_holds_the_target_in_place_of_rows_timed_apart() {
        let mut results = roundtrip_rows(
            &["10", "100"],
            &[
                ("least_in_flight", 60.0),
                ("tower_p2c_pending", 300.0),
                ("retry_least_in_flight", 75.0),
                ("failover_least_in_flight", 60.0),
                ("full_stack", 75.0),
            ],
        );
        // Retry was also timed in one loop with Balance, at N = 10 only.
        results.insert(id("paired", "retry_least_in_flight", "10"), 1.12.into());
        let lines = main_lines(&results);
        let target = |question: &str, name: &str, n: &str| {
            lines
                .iter()
                .find(|l| l.question == question && l.ours.name == name && l.ours.n == n)
                .map(|l| l.target)
        };
        // 75 / 60 = 1.25 would miss at N = 10, but the paired row holds
        // the target there; at N = 100 the rows timed apart still do, and
        // so does the full stack, which was not paired; least-in-flight is
        // held against tower as before (60 / 300 = 0.2).
        for (question, name, n, want) in [
            ("retry vs balance", "retry_least_in_flight", "10", None),
            (
                "retry vs balance, same loop",
                "retry_least_in_flight",
                "10",
                Some(1.15),
            ),
            (
                "retry vs balance",
                "retry_least_in_flight",
                "100",
                Some(1.15),
            ),
            ("retry vs balance", "full_stack", "10", Some(1.15)),
            ("roundtrip vs tower", "least_in_flight", "10", Some(0.25)),
        ] {
            assert_eq!(
                target(question, name, n),
                Some(want),
                "{question}: {name}/{n}"
            );
        }
        let held: Vec<_> = lines.into_iter().map(|l| (l, &results)).collect();
        // Met: least-in-flight and the full stack against tower at both N
        // (0.2, 0.25), the paired Retry; missed: Retry at N = 100 and the
        // full stack against Failover + Balance at both N.
        assert_eq!(targets(&pairs(&held)), (5, 3));
    }

    #[test]
    fn the_summary_keeps_each_rows_lines_together() {
        let mut results = roundtrip_rows(
            &["10", "100"],
            &[
                ("least_in_flight", 50.0),
                ("retry_least_in_flight", 60.0),
                ("tower_retry_least_in_flight", 75.0),
                ("tower_p2c_pending", 200.0),
            ],
        );
        results.insert(
            id("contention", "roundtrip_least_in_flight", "100"),
            50.0.into(),
        );
        results.insert(
            id("contention", "roundtrip_least_in_flight_2_threads", "100"),
            150.0.into(),
        );
        let mut lines: Vec<_> = main_lines(&results)
            .into_iter()
            .map(|l| (l, &results))
            .collect();
        sort_lines(&mut lines);
        let text = summary(&pairs(&lines));
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| roundtrip vs tower | least_in_flight | tower_p2c_pending | 0.250× | 0.250× |  |  | ≤ 0.25× met |",
                "| roundtrip vs tower | retry_least_in_flight | tower_p2c_pending | 0.300× | 0.300× |  |  |  |",
                "| retry vs balance | retry_least_in_flight | least_in_flight | 1.200× | 1.200× |  |  | ≤ 1.15× **missed** (N=10, 100) |",
                "| retry vs tower retry | retry_least_in_flight | tower_retry_least_in_flight | 0.800× | 0.800× |  |  |  |",
                "| 2 threads vs 1 | roundtrip_least_in_flight_2_threads | roundtrip_least_in_flight |  | 3.000× |  |  |  |",
            ],
            "{text}"
        );
    }

    #[test]
    fn a_row_without_its_peer_is_left_out() {
        let mut results = Results::new();
        results.insert(id("pick", "round_robin", "10"), 5.0.into());
        let lines: Vec<_> = main_lines(&results)
            .into_iter()
            .map(|l| (l, &results))
            .collect();
        assert_eq!(lines.len(), 1, "paired with the floor");
        let pairs = pairs(&lines);
        assert!(pairs.is_empty());
        let text = table(&pairs);
        assert_eq!(text.lines().count(), 2, "only the header: {text}");
    }

    #[test]
    fn pairs_contention_scaling_and_pingora_rows() {
        let mut main = Results::new();
        main.insert(id("contention", "round_robin", "100"), 10.0.into());
        main.insert(
            id("contention", "round_robin_2_threads", "100"),
            20.0.into(),
        );
        main.insert(id("pick", "round_robin", "10"), 10.0.into());
        main.insert(id("pick", "round_robin", "10000"), 11.0.into());
        main.insert(id("pick", "floor", "10000"), 5.0.into());
        let lines = main_lines(&main);
        let find = |q: &str| lines.iter().find(|l| l.question == q).unwrap();
        assert_eq!(
            find("2 threads vs 1").peer,
            id("contention", "round_robin", "100")
        );
        assert_eq!(find("2 threads vs 1").target, Some(1.5));
        assert_eq!(
            find("pick N=10000 vs N=10").peer,
            id("pick", "round_robin", "10")
        );
        assert_eq!(find("pick N=10000 vs N=10").target, Some(1.2));

        let mut peers = Results::new();
        peers.insert(id("pick", "weighted_random", "10"), 10.0.into());
        peers.insert(id("pick", "ring", "10"), 10.0.into());
        peers.insert(id("pick", "pingora_random", "10"), 200.0.into());
        let lines = peer_lines(&peers);
        assert_eq!(lines.len(), 2);
        assert!(
            lines
                .iter()
                .any(|l| l.peer.name == "pingora_random" && l.target == Some(0.1))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.peer.name == "pingora_consistent" && l.target.is_none())
        );
    }

    #[test]
    fn the_summary_puts_each_n_in_its_column_and_marks_old_rows() {
        let now = SystemTime::now();
        let at = |mean: f64, ago: u64| Measured {
            mean,
            when: now.checked_sub(Duration::from_secs(ago)),
        };
        let mut r = Results::new();
        r.insert(id("roundtrip", "least_in_flight", "10"), at(20.0, 0));
        r.insert(id("roundtrip", "tower_p2c_pending", "10"), at(100.0, 0));
        r.insert(id("roundtrip", "least_in_flight", "10000"), at(30.0, 0));
        r.insert(
            id("roundtrip", "tower_p2c_pending", "10000"),
            at(100.0, 7200),
        );
        let lines: Vec<_> = main_lines(&r).into_iter().map(|l| (l, &r)).collect();
        let pairs = pairs(&lines);
        assert_eq!(pairs.len(), 2);
        assert!(!pairs[0].apart() && pairs[1].apart());
        let text = summary(&pairs);
        let row = text.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| roundtrip vs tower | least_in_flight | tower_p2c_pending | 0.200× |  |  | 0.300× † \
             | ≤ 0.25× **missed** (N=10000) |"
        );
    }

    #[test]
    fn durations_read_in_a_fitting_unit() {
        assert_eq!(human(12.34), "12.3 ns");
        assert_eq!(human(1_500.0), "1.50 µs");
        assert_eq!(human(2_500_000.0), "2.50 ms");
        assert_eq!(human(3e9), "3.00 s");
    }
}
