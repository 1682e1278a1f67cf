//! Replays linkerd's "Beyond Round Robin" experiment (2016) in simulated
//! time, for each balancing strategy.
//!
//! Eleven simulated backends answer with recorded production latencies
//! (median 167.5 ms, max 200 ms); one of them turns ten times slower from
//! 15 s to 45 s. An open loop sends 1000 requests/s for 60 s through each
//! strategy — and, as the peer, through tower's own p2c balancer over
//! `PeakEwmaDiscover` — and the example prints the latency quantiles, the
//! success rate (answered within 1 s) and the share of traffic the slow
//! backend got while slow, then plots the latency distributions as an SVG.
//!
//! Besides the four strategies (round robin, random, P2C least-in-flight,
//! P2C Peak-EWMA), two Peak-EWMA stacks show the other layers at work:
//! with `FailoverLayer`, whose outlier detection ejects the slow backend
//! once five answers in a row took longer than the success bound; and
//! with `RetryLayer` hedging, which sends a second copy of a request
//! slower than the recent p95 to another backend and cancels the loser
//! (the cancelled attempts are then not seen by Peak-EWMA).
//!
//! Everything runs on tokio's paused clock: a simulated minute takes a
//! few seconds, even in a debug build. Each backend draws its latencies
//! in the order it receives requests, from its own seeded generator, so
//! the strategies are compared on the same draws and a seed repeats a run.
//!
//! ```text
//! cargo run --release --example simulate
//! cargo run --example simulate -- --strategies round-robin,peak-ewma --duration 20
//! cargo run --example simulate -- --help
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use plotters::prelude::*;
use tokio::time::Instant;
use tower::balance::p2c::Balance as TowerBalance;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Layer, Service};
use tower_lb::balance::{
    BalanceLayer, ClassifyFn, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy,
};
use tower_lb::discover::TowerDiscover;
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{Hedge, RetryErrors, RetryLayer};
use tower_lb::sim::{
    Fault, Latency, LatencyRecorder, OpenLoop, QuantileTable, SimBackend, SimCluster, SimError,
    SimResponse,
};

type BoxError = Box<dyn std::error::Error>;

/// The strategies, by flag name.
const STRATEGIES: [(&str, &str); 7] = [
    ("round-robin", "round robin"),
    ("random", "random"),
    ("least-in-flight", "P2C least-in-flight"),
    ("peak-ewma", "P2C Peak-EWMA"),
    ("peak-ewma-failover", "Peak-EWMA + failover"),
    ("peak-ewma-hedge", "Peak-EWMA + hedge"),
    ("tower-p2c", "tower p2c Peak-EWMA"),
];

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
  --seed N            seed of every random draw [1]
  --out PATH          where to write the SVG [<target dir>/simulate.svg]
  --strategies LIST   comma-separated, from: round-robin, random,
                      least-in-flight, peak-ewma, peak-ewma-failover,
                      peak-ewma-hedge, tower-p2c [all]
";

/// The scenario, from the command line.
#[derive(Debug, Clone)]
struct Scenario {
    backends: usize,
    rate: f64,
    duration: Duration,
    slow_factor: f64,
    slow_from: Duration,
    slow_until: Duration,
    success_within: Duration,
    seed: u64,
    out: PathBuf,
    strategies: Vec<&'static str>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            backends: 11,
            rate: 1000.0,
            duration: Duration::from_secs(60),
            slow_factor: 10.0,
            slow_from: Duration::from_secs(15),
            slow_until: Duration::from_secs(45),
            success_within: Duration::from_secs(1),
            seed: 1,
            out: default_out(),
            strategies: STRATEGIES.iter().map(|(k, _)| *k).collect(),
        }
    }
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

impl Scenario {
    /// Parses the arguments; `Ok(None)` for `--help`.
    fn from_args(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let mut sc = Scenario::default();
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
                "--slow-from" => sc.slow_from = seconds(&value)?,
                "--slow-until" => sc.slow_until = seconds(&value)?,
                "--success-ms" => sc.success_within = Duration::from_millis(number(&value)?),
                "--seed" => sc.seed = number(&value)?,
                "--out" => sc.out = PathBuf::from(value),
                "--strategies" => {
                    sc.strategies = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            STRATEGIES
                                .iter()
                                .find(|(k, _)| *k == s)
                                .map(|(k, _)| *k)
                                .ok_or_else(|| format!("unknown strategy {s:?} (see --help)"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(format!("unknown option {flag:?} (see --help)")),
            }
        }
        if sc.backends < 2 {
            return Err("--backends must be at least 2".into());
        }
        if sc.strategies.is_empty() {
            return Err("--strategies names none".into());
        }
        // Validates the rate and the fault window.
        OpenLoop::new(sc.rate, sc.duration).map_err(|e| e.to_string())?;
        sc.cluster(Instant::now()).map_err(|e| e.to_string())?;
        Ok(Some(sc))
    }

    /// Fresh backends whose faults count from `origin`; the last one is
    /// the one that turns slow.
    fn cluster(&self, origin: Instant) -> Result<SimCluster, tower_lb::sim::InvalidSim> {
        let latency = Latency::empirical(QuantileTable::beyond_round_robin());
        let slow = self.backends - 1;
        let backends = (0..self.backends).map(|i| {
            let b = SimBackend::builder(format!("backend-{i:02}"), latency.clone())
                .origin(origin)
                .seed(self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let b = if i == slow {
                b.fault(
                    self.slow_from..self.slow_until,
                    Fault::Slow(self.slow_factor),
                )
            } else {
                b
            };
            b.build()
        });
        SimCluster::new(backends.collect::<Result<Vec<_>, _>>()?)
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
    record: LatencyRecorder,
    /// Share of the requests sent while the slow backend was slow that
    /// went to it.
    slow_share: f64,
    wall: Duration,
}

/// Counts what the slow backend receives while slow: requests received
/// by all backends at the start and end of the window.
async fn slow_share(cluster: SimCluster, origin: Instant, sc: Scenario) -> f64 {
    let until = sc.slow_until.min(sc.duration);
    if sc.slow_from >= until {
        return 0.0;
    }
    let counts = || -> Vec<u64> { cluster.backends().map(|b| b.stats().received).collect() };
    tokio::time::sleep_until(origin + sc.slow_from).await;
    let before = counts();
    tokio::time::sleep_until(origin + until).await;
    let after = counts();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    match (delta.last(), total) {
        (Some(&slow), 1..) => slow as f64 / total as f64,
        _ => 0.0,
    }
}

/// tower-lb's balancer with `strategy` over the cluster.
async fn tower_lb<St: Strategy + Clone>(
    cluster: &SimCluster,
    strategy: St,
    seed: u64,
) -> impl Service<(), Response = SimResponse, Error = tower_lb::Error, Future: Send + 'static>
+ Clone
+ Clone
+ use<St> {
    let pool = DiscoverLayer::new(cluster.source()).layer(cluster.connector());
    pool.applied(1).await;
    BalanceLayer::new(strategy).seed(seed).layer(pool)
}

/// Runs one strategy in its own paused-clock runtime.
fn run(sc: &Scenario, key: &str) -> Result<Run, BoxError> {
    let label = STRATEGIES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("?", |(_, l)| *l);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let wall = Stopwatch::start();
    let (record, slow_share) = rt.block_on(async {
        let origin = Instant::now();
        let cluster = sc.cluster(origin)?;
        let share = tokio::spawn(slow_share(cluster.clone(), origin, sc.clone()));
        let load = OpenLoop::new(sc.rate, sc.duration)?;
        let seed = sc.seed;
        let record = match key {
            "round-robin" => {
                load.run(tower_lb(&cluster, RoundRobin, seed).await, |_| ())
                    .await
            }
            "random" => {
                load.run(tower_lb(&cluster, Random, seed).await, |_| ())
                    .await
            }
            "least-in-flight" => {
                load.run(tower_lb(&cluster, LeastInFlight, seed).await, |_| ())
                    .await
            }
            "peak-ewma" => {
                load.run(tower_lb(&cluster, PeakEwma::new(), seed).await, |_| ())
                    .await
            }
            "peak-ewma-failover" => {
                // Answers slower than the success bound count as the
                // endpoint's failures, so outlier detection ejects it.
                let within = sc.success_within;
                let slow_is_failure = ClassifyFn(move |r: Result<&SimResponse, &SimError>| {
                    r.map_or(true, |res| res.latency > within)
                });
                let pool = DiscoverLayer::new(cluster.source()).layer(cluster.connector());
                pool.applied(1).await;
                let view = FailoverLayer::new(FailoverConfig::new()).layer(pool);
                let lb = BalanceLayer::new(PeakEwma::new())
                    .seed(seed)
                    .classify(slow_is_failure)
                    .layer(view);
                load.run(lb, |_| ()).await
            }
            "peak-ewma-hedge" => {
                // A second copy to another backend once a request is
                // slower than the recent p95 (within the retry budget).
                let lb = tower_lb(&cluster, PeakEwma::new(), seed).await;
                let hedge =
                    Hedge::at_percentile(95.0, Duration::from_millis(50), sc.success_within);
                let client = RetryLayer::new(RetryErrors::new().hedging())
                    .hedge(hedge)
                    .seed(seed)
                    .layer(lb);
                load.run(client, |_| ()).await
            }
            "tower-p2c" => {
                // linkerd2-proxy's defaults: 30 ms before the first sample,
                // 10 s decay. tower's p2c draws from an unseeded generator.
                let discover = TowerDiscover::new(cluster.source(), cluster.connector());
                let discover = PeakEwmaDiscover::new::<()>(
                    discover,
                    Duration::from_millis(30),
                    Duration::from_secs(10),
                    CompleteOnResponse::default(),
                );
                load.run(TowerBalance::new(discover), |_| ()).await
            }
            other => return Err(format!("unknown strategy {other:?}").into()),
        };
        Ok::<_, BoxError>((record, share.await?))
    })?;
    Ok(Run {
        label,
        record,
        slow_share,
        wall: wall.elapsed(),
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{}", d.as_millis()))
}

fn print_table(sc: &Scenario, runs: &[Run]) {
    println!(
        "{:<22}{:>7}{:>7}{:>7}{:>8}{:>7}{:>11}{:>12}",
        "strategy",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        format!("≤{}ms", sc.success_within.as_millis()),
        "slow share"
    );
    for r in runs {
        let l = r.record.latencies();
        println!(
            "{:<22}{:>7}{:>7}{:>7}{:>8}{:>7}{:>10.2}%{:>11.2}%",
            r.label,
            ms(l.quantile(0.5)),
            ms(l.quantile(0.9)),
            ms(l.quantile(0.99)),
            ms(l.quantile(0.999)),
            ms(l.max()),
            100.0 * r.record.success_rate(sc.success_within),
            100.0 * r.slow_share,
        );
    }
    println!();
    println!(
        "Latencies in ms (simulated), over all requests. ≤{}ms: answered within that.",
        sc.success_within.as_millis()
    );
    println!(
        "slow share: of the requests sent while the slow backend was slow, the share it got (1/{} = {:.2}% is its even share).",
        sc.backends,
        100.0 / sc.backends as f64
    );
    println!(
        "Published (p99 / p99.9 ms): round robin 1714 / 1862, least loaded 205 / 1723, Peak-EWMA 199 / 211."
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

fn plot(sc: &Scenario, runs: &[Run]) -> Result<(), BoxError> {
    if let Some(dir) = sc.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lats: Vec<_> = runs.iter().map(|r| r.record.latencies()).collect();
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

    let root = SVGBackend::new(&sc.out, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "{} backends, {} req/s for {} s, one ×{} slower from {} s to {} s",
        sc.backends,
        sc.rate,
        sc.duration.as_secs_f64(),
        sc.slow_factor,
        sc.slow_from.as_secs_f64(),
        sc.slow_until.as_secs_f64()
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
    const COLORS: [RGBColor; 7] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(188, 189, 34),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
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
    let sc = match Scenario::from_args(std::env::args().skip(1)) {
        Ok(Some(sc)) => sc,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::from(2);
        }
    };
    match simulate(&sc) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(sc: &Scenario) -> Result<(), BoxError> {
    let load = OpenLoop::new(sc.rate, sc.duration)?;
    println!(
        "\"Beyond Round Robin\" in simulated time: {} backends (median 167.5 ms), {} requests/s",
        sc.backends, sc.rate
    );
    println!(
        "open loop for {} s ({} requests); backend-{:02} is ×{} slower from {} s to {} s. Seed {}.",
        sc.duration.as_secs_f64(),
        load.requests(),
        sc.backends - 1,
        sc.slow_factor,
        sc.slow_from.as_secs_f64(),
        sc.slow_until.as_secs_f64(),
        sc.seed
    );
    println!();
    let started = Stopwatch::start();
    let mut runs = Vec::new();
    for (i, key) in sc.strategies.iter().enumerate() {
        let label = STRATEGIES
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?", |(_, l)| *l);
        print!("[{}/{}] {label:<22} ", i + 1, sc.strategies.len());
        std::io::stdout().flush()?;
        let r = run(sc, key)?;
        println!("{:>6.1} s wall", r.wall.as_secs_f64());
        runs.push(r);
    }
    println!();
    print_table(sc, &runs);
    plot(sc, &runs)?;
    println!();
    println!(
        "Wrote {} ({:.1} s wall in all).",
        sc.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
