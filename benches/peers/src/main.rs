//! `lb-table`: the table of BENCHMARKS.md, from criterion's output.
//!
//! ```sh
//! cargo bench --features etcd
//! cargo bench --manifest-path benches/peers/Cargo.toml
//! cargo run --manifest-path benches/peers/Cargo.toml --bin lb-table
//! ```
//!
//! It reads the mean of every `new/estimates.json` under the main crate's
//! `target/criterion` and under `benches/peers/target/criterion`, and
//! prints one line per comparison in [`LINES`]: our row, its peer, the
//! ratio ours ÷ peer at each N, and the target that ratio is held to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a comparison's ratio is held to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Held {
    /// Nothing: shown for scale.
    Shown,
    /// At most this, at every N.
    Max(f64),
    /// At most this, at the one N given.
    MaxAt(f64, &'static str),
}
use Held::{Max, MaxAt, Shown};

impl Held {
    /// How the table states it.
    fn label(self) -> String {
        match self {
            Shown => String::new(),
            Max(t) => format!("≤ {t}×"),
            MaxAt(t, n) => format!("≤ {t}× at N={n}"),
        }
    }

    /// The most the ratio may be at `n`, if it is held there.
    fn max_at(self, n: &str) -> Option<f64> {
        match self {
            Shown => None,
            Max(t) => Some(t),
            MaxAt(t, at) => (at == n).then_some(t),
        }
    }
}

/// Every comparison, in the order the table shows them: question, our row,
/// the peer it is compared with, and the target for ours ÷ peer.
///
/// A row is `group/function` as the bench names it, with one ratio per N
/// both rows were measured at, or `group/function@N` for that N alone. A
/// peer with no `/` is only a label: our row measured the ratio itself,
/// in one loop with that peer.
#[rustfmt::skip]
const LINES: &[(&str, &str, &str, Held)] = &[
    ("roundtrip vs tower", "roundtrip/failover_least_in_flight", "roundtrip/tower_p2c_pending", Shown),
    ("roundtrip vs tower", "roundtrip/full_stack", "roundtrip/tower_p2c_pending", Max(0.5)),
    ("roundtrip vs tower", "roundtrip/full_stack_peak_ewma", "roundtrip/tower_p2c_peak_ewma", Max(0.5)),
    ("roundtrip vs tower", "roundtrip/least_in_flight", "roundtrip/tower_p2c_pending", Max(0.25)),
    ("roundtrip vs tower", "roundtrip/peak_ewma", "roundtrip/tower_p2c_peak_ewma", Max(0.15)),
    ("roundtrip vs tower", "roundtrip/random", "roundtrip/tower_p2c_pending", Shown),
    ("roundtrip vs tower", "roundtrip/retry_least_in_flight", "roundtrip/tower_p2c_pending", Shown),
    ("roundtrip vs tower", "roundtrip/round_robin", "roundtrip/tower_p2c_pending", Shown),
    ("roundtrip vs tower", "roundtrip/weighted_random", "roundtrip/tower_p2c_pending", Shown),
    ("roundtrip vs tower", "roundtrip/weighted_round_robin", "roundtrip/tower_p2c_pending", Shown),
    ("retry vs balance", "retry/retry_least_in_flight", "least_in_flight, same loop", Max(1.15)),
    ("metrics vs none", "roundtrip_metrics/full_stack_metrics_noop", "roundtrip_metrics/full_stack", Shown),
    ("metrics vs none", "roundtrip_metrics/full_stack_metrics_prometheus", "roundtrip_metrics/full_stack", Max(1.15)),
    ("metrics vs none", "roundtrip_metrics/full_stack_metrics_prometheus_no_histograms", "roundtrip_metrics/full_stack", Shown),
    ("metrics vs none", "roundtrip_metrics/full_stack_metrics_prometheus_every_answer", "roundtrip_metrics/full_stack", Shown),
    ("metrics vs none", "roundtrip_metrics/full_stack_peak_ewma_metrics_noop", "roundtrip_metrics/full_stack_peak_ewma", Shown),
    ("metrics vs none", "roundtrip_metrics/full_stack_peak_ewma_metrics_prometheus", "roundtrip_metrics/full_stack_peak_ewma", Max(1.15)),
    ("pick vs floor", "pick/least_in_flight", "pick/floor", Shown),
    ("pick vs floor", "pick/least_in_flight_weighted", "pick/floor", Shown),
    ("pick vs floor", "pick/maglev", "pick/floor", Shown),
    ("pick vs floor", "pick/peak_ewma", "pick/floor", Shown),
    ("pick vs floor", "pick/random", "pick/floor", Shown),
    ("pick vs floor", "pick/rendezvous", "pick/floor", Shown),
    ("pick vs floor", "pick/ring", "pick/floor", Shown),
    ("pick vs floor", "pick/round_robin", "pick/floor", Max(3.0)),
    ("pick vs floor", "pick/weighted_random", "pick/floor", Max(3.0)),
    ("pick vs floor", "pick/weighted_random_weighted", "pick/floor", Max(3.0)),
    ("pick vs floor", "pick/weighted_round_robin", "pick/floor", Max(3.0)),
    ("pick vs floor", "pick/weighted_round_robin_weighted", "pick/floor", Max(3.0)),
    ("pick N=10000 vs N=10", "pick/least_in_flight@10000", "pick/least_in_flight@10", Shown),
    ("pick N=10000 vs N=10", "pick/least_in_flight_weighted@10000", "pick/least_in_flight_weighted@10", Shown),
    ("pick N=10000 vs N=10", "pick/maglev@10000", "pick/maglev@10", Shown),
    ("pick N=10000 vs N=10", "pick/peak_ewma@10000", "pick/peak_ewma@10", Shown),
    ("pick N=10000 vs N=10", "pick/random@10000", "pick/random@10", Shown),
    ("pick N=10000 vs N=10", "pick/rendezvous@10000", "pick/rendezvous@10", Shown),
    ("pick N=10000 vs N=10", "pick/ring@10000", "pick/ring@10", Shown),
    ("pick N=10000 vs N=10", "pick/round_robin@10000", "pick/round_robin@10", Max(1.2)),
    ("pick N=10000 vs N=10", "pick/weighted_random@10000", "pick/weighted_random@10", Max(1.2)),
    ("pick N=10000 vs N=10", "pick/weighted_random_weighted@10000", "pick/weighted_random_weighted@10", Max(1.2)),
    ("pick N=10000 vs N=10", "pick/weighted_round_robin@10000", "pick/weighted_round_robin@10", Max(1.2)),
    ("pick N=10000 vs N=10", "pick/weighted_round_robin_weighted@10000", "pick/weighted_round_robin_weighted@10", Max(1.2)),
    ("pick vs pingora", "pick_vs_pingora/maglev", "pick_vs_pingora/pingora_consistent", Shown),
    ("pick vs pingora", "pick_vs_pingora/random", "pick_vs_pingora/pingora_random", Shown),
    ("pick vs pingora", "pick_vs_pingora/ring", "pick_vs_pingora/pingora_consistent", Shown),
    ("pick vs pingora", "pick_vs_pingora/round_robin", "pick_vs_pingora/pingora_round_robin", Max(0.1)),
    ("pick vs pingora", "pick_vs_pingora/weighted_random", "pick_vs_pingora/pingora_random", Max(0.1)),
    ("pick vs pingora", "pick_vs_pingora/weighted_round_robin", "pick_vs_pingora/pingora_round_robin", Max(0.1)),
    ("update vs tower", "update/lb_channel_publish", "update/tower_p2c_rebuild", MaxAt(0.25, "1000")),
    ("update vs tower", "update/lb_etcd_decode_publish", "update/tower_p2c_rebuild", Shown),
    ("update vs tower", "update/lb_file_decode_publish", "update/tower_p2c_rebuild", Shown),
    ("update vs tower", "update/lb_registry_publish", "update/tower_p2c_rebuild", Shown),
    ("update vs pingora", "update_vs_pingora/lb_channel_publish", "update_vs_pingora/pingora_update", Shown),
    ("2 threads vs 1", "contention/floor_2_threads", "contention/floor", Shown),
    ("2 threads vs 1", "contention/least_in_flight_2_threads", "contention/least_in_flight", Max(1.5)),
    ("2 threads vs 1", "contention/peak_ewma_2_threads", "contention/peak_ewma", Max(1.5)),
    ("2 threads vs 1", "contention/random_2_threads", "contention/random", Max(1.5)),
    ("2 threads vs 1", "contention/round_robin_2_threads", "contention/round_robin", Max(1.5)),
    ("2 threads vs 1", "contention/roundtrip_least_in_flight_2_threads", "contention/roundtrip_least_in_flight", Shown),
    ("2 threads vs 1", "contention/roundtrip_retry_least_in_flight_2_threads", "contention/roundtrip_retry_least_in_flight", Shown),
    ("2 threads vs 1", "contention/weighted_round_robin_2_threads", "contention/weighted_round_robin", Max(1.5)),
];

/// The N columns of the table.
const NS: [&str; 4] = ["10", "100", "1000", "10000"];

/// Mean time per iteration in ns (for a same-loop row, the ratio it
/// measured), by row (`group/function`) and N.
type Results = BTreeMap<(String, String), f64>;

/// Reads every benchmark under `dir` (criterion's output directory) into `out`.
fn load(dir: &Path, out: &mut Results) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        match path.file_name().and_then(|f| f.to_str()) {
            Some("new") => out.extend(read_one(&path)),
            Some("base" | "report") => {}
            _ => load(&path, out),
        }
    }
}

/// The row, N and mean of the benchmark whose `new/` directory this is.
fn read_one(new: &Path) -> Option<((String, String), f64)> {
    let json = |file: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(new.join(file)).ok()?).ok()
    };
    let (bench, estimates) = (json("benchmark.json")?, json("estimates.json")?);
    let field = |k: &str| bench.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let row = format!("{}/{}", field("group_id"), field("function_id"));
    let mean = estimates.get("mean")?.get("point_estimate")?.as_f64()?;
    Some(((row, field("value_str").to_owned()), mean))
}

/// A row spec split into its row and the one N it names, if any.
fn split(spec: &str) -> (&str, Option<&str>) {
    spec.split_once('@')
        .map_or((spec, None), |(row, n)| (row, Some(n)))
}

/// Ours ÷ peer at each N both were measured at, in order of N.
fn ratios(r: &Results, ours: &str, peer: &str) -> Vec<(String, f64)> {
    let ((ours, only), (peer_row, peer_n)) = (split(ours), split(peer));
    let mut out: Vec<(String, f64)> = r
        .iter()
        .filter(|((row, n), _)| row == ours && only.is_none_or(|o| o == n))
        .filter_map(|((_, n), &mean)| {
            if !peer.contains('/') {
                return Some((n.clone(), mean));
            }
            let key = (peer_row.to_owned(), peer_n.unwrap_or(n).to_owned());
            Some((n.clone(), mean / r.get(&key)?))
        })
        .collect();
    out.sort_by_key(|(n, _)| n.parse().unwrap_or(u64::MAX));
    out
}

/// The function part of a row: `least_in_flight` of `pick/least_in_flight@10`.
fn function(spec: &str) -> &str {
    let row = split(spec).0;
    row.split_once('/').map_or(row, |(_, f)| f)
}

/// The table, and how many targets (one per N) were met and missed.
fn table(r: &Results) -> (String, usize, usize) {
    let mut out = String::from(
        "| question | ours | peer | N=10 | N=100 | N=1000 | N=10000 | target |\n\
         |---|---|---|---:|---:|---:|---:|---|\n",
    );
    let (mut met, mut missed) = (0, 0);
    for &(question, ours, peer, held) in LINES {
        let ratios = ratios(r, ours, peer);
        if ratios.is_empty() {
            continue;
        }
        let peer_name = match split(peer) {
            (row, Some(n)) if row == split(ours).0 => format!("same, N={n}"),
            _ => function(peer).to_owned(),
        };
        let col = |n: &str| {
            ratios
                .iter()
                .find(|c| c.0 == n)
                .map(|c| format!("{:.3}×", c.1))
        };
        let cols = NS.map(|n| col(n).unwrap_or_default()).join(" | ");
        let (mut misses, mut held_at) = (Vec::new(), 0);
        for (n, x) in ratios
            .iter()
            .filter_map(|(n, x)| Some((n, x > &held.max_at(n)?)))
        {
            held_at += 1;
            misses.extend(x.then_some(n.as_str()));
        }
        met += held_at - misses.len();
        missed += misses.len();
        let target = match &misses[..] {
            _ if held == Shown => String::new(),
            [] => format!("{} met", held.label()),
            m => format!("{} **missed** (N={})", held.label(), m.join(", ")),
        };
        let ours = function(ours);
        let _ = writeln!(
            out,
            "| {question} | {ours} | {peer_name} | {cols} | {target} |"
        );
    }
    (out, met, missed)
}

fn main() -> ExitCode {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| here.join("../../target"), PathBuf::from)
        .join("criterion");
    let mut results = Results::new();
    load(&main_dir, &mut results);
    load(&here.join("target/criterion"), &mut results);
    if results.is_empty() {
        eprintln!(
            "no results under {}: run the benches first",
            main_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let (text, met, missed) = table(&results);
    print!("{text}\nRatio = ours / peer, from mean times (a same-loop row measured the ratio ");
    println!("itself). Targets: {met} met, {missed} missed.");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(rows: &[(&str, &str, f64)]) -> Results {
        let key = |row: &str, n: &str| (row.to_owned(), n.to_owned());
        rows.iter()
            .map(|&(row, n, mean)| (key(row, n), mean))
            .collect()
    }

    #[test]
    fn reads_the_mean_of_each_benchmark_in_criterions_layout() {
        let dir = std::env::temp_dir().join(format!("lb-table-{}", std::process::id()));
        let new = dir.join("pick/floor/100/new");
        std::fs::create_dir_all(&new).unwrap();
        let bench = r#"{"group_id": "pick", "function_id": "floor", "value_str": "100"}"#;
        std::fs::write(new.join("benchmark.json"), bench).unwrap();
        let estimates = r#"{"mean": {"point_estimate": 17.5}}"#;
        std::fs::write(new.join("estimates.json"), estimates).unwrap();
        // A `base/` copy from an earlier run is not read.
        std::fs::create_dir_all(dir.join("pick/floor/100/base")).unwrap();
        std::fs::copy(
            new.join("benchmark.json"),
            dir.join("pick/floor/100/base/benchmark.json"),
        )
        .unwrap();
        let mut r = Results::new();
        load(&dir, &mut r);
        assert_eq!(r, results(&[("pick/floor", "100", 17.5)]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_line_is_held_to_its_target_at_each_n() {
        let r = results(&[
            ("roundtrip/least_in_flight", "10", 20.0),
            ("roundtrip/least_in_flight", "100", 30.0),
            ("roundtrip/tower_p2c_pending", "10", 100.0),
            ("roundtrip/tower_p2c_pending", "100", 100.0),
            ("retry/retry_least_in_flight", "100", 1.1),
            ("update/lb_channel_publish", "100", 40.0),
            ("update/lb_channel_publish", "1000", 20.0),
            ("update/tower_p2c_rebuild", "100", 100.0),
            ("update/tower_p2c_rebuild", "1000", 100.0),
            ("pick/round_robin", "10", 10.0),
            ("pick/round_robin", "10000", 13.0),
            // No peer measured: no line.
            ("pick/ring", "10", 10.0),
        ]);
        let (text, met, missed) = table(&r);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "| roundtrip vs tower | least_in_flight | tower_p2c_pending | 0.200× | 0.300× |  |  | ≤ 0.25× **missed** (N=100) |",
                "| retry vs balance | retry_least_in_flight | least_in_flight, same loop |  | 1.100× |  |  | ≤ 1.15× met |",
                "| pick N=10000 vs N=10 | round_robin | same, N=10 |  |  |  | 1.300× | ≤ 1.2× **missed** (N=10000) |",
                "| update vs tower | lb_channel_publish | tower_p2c_rebuild |  | 0.400× | 0.200× |  | ≤ 0.25× at N=1000 met |",
            ],
            "{text}"
        );
        assert_eq!((met, missed), (3, 2));
    }

    #[test]
    fn every_line_names_rows_and_appears_once() {
        for (i, &(question, ours, peer, held)) in LINES.iter().enumerate() {
            assert!(ours.contains('/') && !question.is_empty(), "{ours}");
            // A peer that is not a row labels the loop our row shared with it.
            assert!(peer.contains('/') || peer.ends_with("same loop"), "{peer}");
            assert!(held.max_at("10000").is_none_or(|t| t > 0.0), "{ours}");
            let again = LINES[..i]
                .iter()
                .any(|l| (l.0, l.1, l.2) == (question, ours, peer));
            assert!(!again, "{question}: {ours} vs {peer} twice");
        }
    }
}
