//! Replays linkerd's "Beyond Round Robin" experiment (2016) in simulated
//! time, for each balancing strategy.
//!
//! Eleven simulated backends answer with recorded production latencies
//! (median 167.5 ms, max 200 ms); one of them turns ten times slower from
//! 15 s to 45 s. An open loop sends 1000 requests/s for 60 s through each
//! strategy — and, as the peer, through tower's own p2c balancer over
//! `PeakEwmaDiscover` — and the example prints the latency quantiles, the
//! success rate (answered within 1 s), how many requests took over 1 s and
//! the share of traffic the slow backend got while slow, then plots the
//! latency distributions as an SVG. The scenario and the stacks are
//! `tower_lb::sim::Scenario` and `Stack`, which `tests/sim.rs` runs too.
//!
//! Besides the four strategies (round robin, random, P2C least-in-flight,
//! P2C Peak-EWMA), three Peak-EWMA stacks show the other layers at work:
//! with `FailoverLayer`, whose outlier detection ejects the slow backend
//! once five answers in a row took longer than the success bound; with
//! `RetryLayer` hedging, which sends a second copy of a request slower
//! than the recent p95 to another backend and cancels the loser (whose
//! time Peak-EWMA scores as a lower bound of its latency); and with both,
//! failover under hedging.
//!
//! `--timeout MS` cancels each request after MS milliseconds with
//! `tower::timeout::Timeout` around the whole client stack (above the
//! balancer, and above `RetryLayer` where there is one, so it bounds the
//! request with its hedges), for every strategy including the tower peer.
//! The published experiment has none, and it is a different experiment:
//! a cancelled request's slow answer never reaches a latency-aware
//! balancer. How each number is counted:
//!
//! - latency: from when a request was due to its answer; a timed-out
//!   request's is its timeout.
//! - `≤1000ms` (the success rate): answered with a response within the
//!   success bound; a timed-out request is a failure.
//! - `> 1 s`: requests with no answer within the success bound, answered
//!   later or timed out. With a timeout at or below the bound this is the
//!   timed-out count, and success + `> 1 s` = 100 % when nothing fails
//!   fast.
//! - slow share: of the requests the backends received while the slow one
//!   was slow (hedged copies included), the share it received.
//!
//! Everything runs on tokio's paused clock: a simulated minute takes a
//! few seconds, even in a debug build. Each backend draws its latencies
//! in the order it receives requests, from its own seeded generator, so
//! the strategies are compared on the same draws and a seed repeats a run.
//!
//! ```text
//! cargo run --release --example simulate
//! cargo run --release --example simulate -- --timeout 1000
//! cargo run --example simulate -- --strategies round-robin,peak-ewma --duration 20
//! cargo run --example simulate -- --help
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use plotters::prelude::*;
use tower::balance::p2c::Balance as TowerBalance;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower_lb::discover::TowerDiscover;
use tower_lb::sim::{OpenLoop, Outcome, Scenario, ScenarioRun, Stack};

type BoxError = Box<dyn std::error::Error>;

/// What a run goes through: one of tower-lb's stacks, or the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Lb(Stack),
    /// tower 0.5's p2c balancer over `PeakEwmaDiscover`.
    TowerP2c,
}

impl Strategy {
    /// Every strategy, in the order of the table.
    fn all() -> Vec<Strategy> {
        let mut all: Vec<_> = Stack::ALL.into_iter().map(Strategy::Lb).collect();
        all.push(Strategy::TowerP2c);
        all
    }

    fn key(self) -> &'static str {
        match self {
            Strategy::Lb(stack) => stack.name(),
            Strategy::TowerP2c => "tower-p2c",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Strategy::Lb(stack) => stack.label(),
            Strategy::TowerP2c => "tower p2c Peak-EWMA",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        Strategy::all()
            .into_iter()
            .find(|st| st.key() == s)
            .ok_or_else(|| format!("unknown strategy {s:?} (see --help)"))
    }
}

const HELP: &str = "\
Replays the \"Beyond Round Robin\" experiment in simulated time.

Options (defaults in brackets):
  --backends N        backends, the last of which turns slow [11]
  --rate R            requests per second, open loop [1000]
  --duration S        seconds of simulated load [60]
  --slow-factor X     latency multiplier of the slow backend [10]
  --slow-from S       when it turns slow, in seconds [15]
  --slow-until S      when it recovers, in seconds [45]
  --success-ms MS     a request succeeds if answered within this [1000]
  --timeout MS        cancel each request after MS milliseconds
                      (tower's Timeout around the whole client stack);
                      a timed-out request is a failure, its latency the
                      timeout [off, as in the published experiment]
  --seed N            seed of every random draw [1]
  --out PATH          where to write the SVG [<target dir>/simulate.svg]
  --strategies LIST   comma-separated, from: round-robin, random,
                      least-in-flight, peak-ewma, peak-ewma-failover,
                      peak-ewma-hedge, peak-ewma-failover-hedge,
                      tower-p2c [all]
";

/// The command line: the scenario, where to plot, what to run.
#[derive(Debug, Clone)]
struct Options {
    scenario: Scenario,
    out: PathBuf,
    strategies: Vec<Strategy>,
}

/// `<target dir>/simulate.svg`: the example runs from
/// `<target dir>/<profile>/examples/`.
fn default_out() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("simulate.svg")
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s:?}: {e}"))
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

impl Options {
    /// Parses the arguments; `Ok(None)` for `--help`.
    fn from_args(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let mut sc = Scenario::beyond_round_robin();
        let mut out = default_out();
        let mut strategies = Strategy::all();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
            match flag.as_str() {
                "--backends" => sc.backends = number(&value)?,
                "--rate" => sc.rate = number(&value)?,
                "--duration" => sc.duration = seconds(&value)?,
                "--slow-factor" => sc.slow_factor = number(&value)?,
                "--slow-from" => sc.slow.start = seconds(&value)?,
                "--slow-until" => sc.slow.end = seconds(&value)?,
                "--success-ms" => sc.success_within = Duration::from_millis(number(&value)?),
                "--timeout" => sc.timeout = Some(Duration::from_millis(number(&value)?)),
                "--seed" => sc.seed = number(&value)?,
                "--out" => out = PathBuf::from(value),
                "--strategies" => {
                    strategies = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(Strategy::parse)
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(format!("unknown option {flag:?} (see --help)")),
            }
        }
        if strategies.is_empty() {
            return Err("--strategies names none".into());
        }
        // The backends, the rate and the fault window.
        sc.validate().map_err(|e| e.to_string())?;
        Ok(Some(Options {
            scenario: sc,
            out,
            strategies,
        }))
    }
}

/// Wall time, for progress only; the simulation itself runs on tokio's
/// paused clock.
#[allow(clippy::disallowed_types)]
struct Stopwatch(std::time::Instant);

#[allow(clippy::disallowed_types)]
impl Stopwatch {
    fn start() -> Self {
        Stopwatch(std::time::Instant::now())
    }

    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// One strategy's run.
struct Run {
    label: &'static str,
    run: ScenarioRun,
    wall: Duration,
}

/// Runs one strategy in its own paused-clock runtime.
fn run(sc: &Scenario, strategy: Strategy) -> Result<Run, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let wall = Stopwatch::start();
    let run = rt.block_on(async {
        match strategy {
            Strategy::Lb(stack) => sc.run(stack).await,
            Strategy::TowerP2c => {
                // linkerd2-proxy's defaults: 30 ms before the first sample,
                // 10 s decay. tower's p2c draws from an unseeded generator.
                sc.run_with(|cluster| async move {
                    let discover = PeakEwmaDiscover::new::<()>(
                        TowerDiscover::new(cluster.source(), cluster.connector()),
                        Duration::from_millis(30),
                        Duration::from_secs(10),
                        CompleteOnResponse::default(),
                    );
                    TowerBalance::new(discover)
                })
                .await
            }
        }
    })?;
    Ok(Run {
        label: strategy.label(),
        run,
        wall: wall.elapsed(),
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{}", d.as_millis()))
}

/// "1 s" or "250 ms".
fn bound(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn print_table(sc: &Scenario, runs: &[Run]) {
    let timeout = sc.timeout.is_some();
    let over = format!("> {}", bound(sc.success_within));
    print!(
        "{:<30}{:>7}{:>7}{:>7}{:>8}{:>7}{:>11}{:>8}",
        "strategy",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        format!("≤{}ms", sc.success_within.as_millis()),
        over,
    );
    if timeout {
        print!("{:>11}", "timed out");
    }
    println!("{:>12}", "slow share");
    for r in runs {
        let l = r.run.record.latencies();
        print!(
            "{:<30}{:>7}{:>7}{:>7}{:>8}{:>7}{:>10.2}%{:>8}",
            r.label,
            ms(l.quantile(0.5)),
            ms(l.quantile(0.9)),
            ms(l.quantile(0.99)),
            ms(l.quantile(0.999)),
            ms(l.max()),
            100.0 * r.run.success_rate(),
            r.run.slower(),
        );
        if timeout {
            print!("{:>11}", r.run.record.count(Outcome::TimedOut));
        }
        println!("{:>11.2}%", 100.0 * r.run.slow_share);
    }
    println!();
    match sc.timeout {
        Some(t) => println!(
            "Latencies in ms (simulated), over all requests; each request cancelled at {} ms (its latency then).",
            t.as_millis()
        ),
        None => println!("Latencies in ms (simulated), over all requests; no timeout."),
    }
    println!(
        "≤{}ms: answered within that (timed out is failed). {over}: requests with no answer within it (late or timed out).",
        sc.success_within.as_millis()
    );
    println!(
        "slow share: of the requests the backends received while the slow one was slow, the share it got (1/{} = {:.2}% is its even share).",
        sc.backends,
        100.0 / sc.backends as f64
    );
    println!(
        "Published, no timeout (p99 / p99.9 ms): round robin 1714 / 1862, least loaded 205 / 1723, Peak-EWMA 199 / 211."
    );
}

/// `x` on the plot's quantile axis is the number of nines: q = 1 - 10^-x.
fn quantile_at(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * quantile_at(*x);
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("p{s}")
}

/// Latency labels: 1, 1.5, 2, 3, 5 and 7 times powers of ten, within
/// the range.
fn y_ticks(min: f64, max: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max {
        for m in [1.0, 1.5, 2.0, 3.0, 5.0, 7.0] {
            let t = m * decade;
            if (min..=max).contains(&t) {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn plot(opts: &Options, runs: &[Run]) -> Result<(), BoxError> {
    let sc = &opts.scenario;
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lats: Vec<_> = runs.iter().map(|r| r.run.record.latencies()).collect();
    let n = lats.iter().map(|l| l.len()).max().unwrap_or(1).max(10);
    // Up to the highest quantile the samples resolve.
    let x_max = (n as f64).log10().floor().max(1.0);
    let to_ms = |d: Duration| d.as_secs_f64() * 1e3;
    let y_min = lats
        .iter()
        .filter_map(|l| l.min())
        .map(to_ms)
        .fold(f64::MAX, f64::min);
    let y_max = lats
        .iter()
        .filter_map(|l| l.max())
        .map(to_ms)
        .fold(1.0, f64::max);
    let y_min = (y_min * 0.9).clamp(0.1, y_max * 0.5);

    let root = SVGBackend::new(&opts.out, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let timeout = sc
        .timeout
        .map_or_else(String::new, |t| format!(", timeout {} ms", t.as_millis()));
    let caption = format!(
        "{} backends, {} req/s for {} s, one ×{} slower from {} s to {} s{timeout}",
        sc.backends,
        sc.rate,
        sc.duration.as_secs_f64(),
        sc.slow_factor,
        sc.slow.start.as_secs_f64(),
        sc.slow.end.as_secs_f64()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            0f64..x_max,
            (y_min..y_max * 1.2)
                .log_scale()
                .with_key_points(y_ticks(y_min, y_max * 1.2)),
        )?;
    chart
        .configure_mesh()
        .x_desc("quantile")
        .y_desc("latency (ms, log scale)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&nines_label)
        .y_labels(16)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    const COLORS: [RGBColor; 8] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(188, 189, 34),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(23, 190, 207),
        RGBColor(127, 127, 127),
    ];
    for (i, (run, l)) in runs.iter().zip(&lats).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = (0..=(x_max * 100.0) as usize).filter_map(|k| {
            let x = k as f64 / 100.0;
            l.quantile(quantile_at(x)).map(|d| (x, to_ms(d)))
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(run.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let opts = match Options::from_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::from(2);
        }
    };
    match simulate(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(opts: &Options) -> Result<(), BoxError> {
    let sc = &opts.scenario;
    let load = OpenLoop::new(sc.rate, sc.duration)?;
    println!(
        "\"Beyond Round Robin\" in simulated time: {} backends (median 167.5 ms), {} requests/s",
        sc.backends, sc.rate
    );
    let timeout = sc.timeout.map_or_else(
        || "no timeout".to_owned(),
        |t| format!("each request cancelled at {} ms", t.as_millis()),
    );
    println!(
        "open loop for {} s ({} requests); backend-{:02} is ×{} slower from {} s to {} s; {timeout}. Seed {}.",
        sc.duration.as_secs_f64(),
        load.requests(),
        sc.backends - 1,
        sc.slow_factor,
        sc.slow.start.as_secs_f64(),
        sc.slow.end.as_secs_f64(),
        sc.seed
    );
    println!();
    let started = Stopwatch::start();
    let mut runs = Vec::new();
    for (i, &strategy) in opts.strategies.iter().enumerate() {
        let label = strategy.label();
        print!("[{}/{}] {label:<30} ", i + 1, opts.strategies.len());
        std::io::stdout().flush()?;
        let r = run(sc, strategy)?;
        println!("{:>6.1} s wall", r.wall.as_secs_f64());
        runs.push(r);
    }
    println!();
    print_table(sc, &runs);
    plot(opts, &runs)?;
    println!();
    println!(
        "Wrote {} ({:.1} s wall in all).",
        opts.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
