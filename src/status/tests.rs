use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::Endpoint;
use crate::failover::{EjectionReason, TierReport};

fn report(key: &str, priority: u8, weight: u32) -> EndpointReport {
    EndpointReport {
        endpoint: Endpoint::builder(key)
            .address(
                format!("127.0.0.1:{}", 9000 + u16::from(priority))
                    .parse()
                    .unwrap(),
            )
            .priority(priority)
            .weight(weight)
            .build()
            .unwrap(),
        in_flight: 2,
        successes: 10,
        failures: 3,
        consecutive_failures: 1,
        ewma_latency: Some(Duration::from_micros(1500)),
    }
}

fn healthy(key: &str, priority: u8) -> EndpointHealth {
    EndpointHealth {
        key: key.into(),
        priority,
        down: false,
        ejected_until: None,
        on_trial: false,
        times_ejected: 0,
        active_healthy: true,
        weight_factor: 1.0,
        ejection_reason: None,
        next_probe: None,
        failed_probes: 0,
        slow_start_until: None,
        transitions: Transitions::default(),
    }
}

#[test]
fn each_health_maps_to_one_state_with_its_reason_and_time_left() {
    let now = Instant::now();
    let down = EndpointHealth {
        down: true,
        next_probe: Some(now + Duration::from_secs(3)),
        failed_probes: 2,
        ..healthy("down", 0)
    };
    let ejected = EndpointHealth {
        ejected_until: Some(now + Duration::from_secs(30)),
        ejection_reason: Some(EjectionReason::ConsecutiveFailures),
        times_ejected: 1,
        ..healthy("ejected", 0)
    };
    let trial = EndpointHealth {
        on_trial: true,
        ejection_reason: Some(EjectionReason::FailurePercentage),
        ..healthy("trial", 0)
    };
    let checks = EndpointHealth {
        active_healthy: false,
        ..healthy("checks", 0)
    };
    let ramp = EndpointHealth {
        weight_factor: 0.25,
        slow_start_until: Some(now + Duration::from_secs(20)),
        ..healthy("ramp", 0)
    };

    let s = endpoint(report("down", 0, 100), Some(&down), now);
    assert_eq!(s.state, EndpointState::Down);
    assert_eq!(s.reason.as_deref(), Some("unreachable; 2 probes failed"));
    assert_eq!(s.time_left_ms, Some(3000));
    assert_eq!(s.failed_probes, 2);

    let s = endpoint(report("ejected", 0, 100), Some(&ejected), now);
    assert_eq!(s.state, EndpointState::Ejected);
    assert_eq!(s.reason.as_deref(), Some("consecutive failures"));
    assert_eq!(s.time_left_ms, Some(30_000));
    assert_eq!(s.times_ejected, 1);

    let s = endpoint(report("trial", 0, 100), Some(&trial), now);
    assert_eq!(s.state, EndpointState::OnTrial);
    assert_eq!(
        s.reason.as_deref(),
        Some("failure percentage; one trial request decides")
    );

    let s = endpoint(report("checks", 0, 100), Some(&checks), now);
    assert_eq!(s.state, EndpointState::FailingChecks);

    let s = endpoint(report("ramp", 0, 100), Some(&ramp), now);
    assert_eq!(s.state, EndpointState::SlowStart);
    assert_eq!(s.reason.as_deref(), Some("slow start: 25% of its weight"));
    assert_eq!(s.time_left_ms, Some(20_000));
    assert_eq!(s.weight_factor, 0.25);

    // Weight 0 drains, with or without failover; down outranks it.
    let s = endpoint(report("w0", 0, 0), Some(&healthy("w0", 0)), now);
    assert_eq!(s.state, EndpointState::Draining);
    let s = endpoint(report("w0", 0, 0), None, now);
    assert_eq!(s.state, EndpointState::Draining);
    let s = endpoint(report("down", 0, 0), Some(&down), now);
    assert_eq!(s.state, EndpointState::Down);

    let s = endpoint(report("ok", 0, 100), None, now);
    assert_eq!(s.state, EndpointState::Healthy);
    assert_eq!(s.reason, None);
    assert_eq!(s.address.as_deref(), Some("127.0.0.1:9000"));
    assert_eq!((s.in_flight, s.successes, s.failures), (2, 10, 3));
    assert_eq!(s.latency_ms, Some(1.5));
}

#[test]
fn a_time_in_the_past_is_zero_left() {
    let now = Instant::now();
    let ejected = EndpointHealth {
        ejected_until: Some(now),
        ..healthy("e", 0)
    };
    let later = now + Duration::from_secs(1);
    let s = endpoint(report("e", 0, 100), Some(&ejected), later);
    assert_eq!(s.time_left_ms, Some(0));
}

fn statuses(now: Instant) -> (Vec<EndpointStatus>, HealthReport) {
    let down = EndpointHealth {
        down: true,
        ..healthy("b", 0)
    };
    let health = HealthReport {
        panic: false,
        tiers: vec![
            TierReport {
                priority: 0,
                endpoints: 2,
                healthy: 1,
                down: 1,
                ejected: 0,
                health_percent: 70.0,
                load_percent: 70.0,
            },
            TierReport {
                priority: 1,
                endpoints: 1,
                healthy: 1,
                down: 0,
                ejected: 0,
                health_percent: 100.0,
                load_percent: 30.0,
            },
        ],
        endpoints: vec![healthy("a", 0), down.clone(), healthy("c", 1)],
        ejections: 0,
        downs: 1,
        detections: 4,
    };
    let endpoints = vec![
        endpoint(report("a", 0, 100), Some(&health.endpoints[0]), now),
        endpoint(report("b", 0, 100), Some(&down), now),
        endpoint(report("c", 1, 100), Some(&health.endpoints[2]), now),
    ];
    (endpoints, health)
}

#[test]
fn tiers_count_states_and_take_failovers_split() {
    let (endpoints, health) = statuses(Instant::now());
    let t = tiers(&endpoints, Some(&health));
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].priority, t[0].endpoints, t[0].healthy, t[0].down),
        (0, 2, 1, 1)
    );
    assert_eq!(t[0].load_percent, Some(70.0));
    assert_eq!(t[1].load_percent, Some(30.0));
    assert_eq!(t[1].health_percent, 100.0);

    // Without failover: the share in rotation, and no split.
    let t = tiers(&endpoints, None);
    assert_eq!(t[0].health_percent, 50.0);
    assert_eq!(t[0].load_percent, None);
}

fn sample() -> Status {
    let (endpoints, health) = statuses(Instant::now());
    Status {
        service: "api".into(),
        strategy: Some("p2c_peak_ewma".into()),
        revision: 3,
        discovery: DiscoveryStatus::default(),
        failover: true,
        panic: false,
        tiers: tiers(&endpoints, Some(&health)),
        endpoints,
        ejections: 0,
        downs: 1,
        retry: Some(RetryStatus {
            requests: 40,
            retries: 4,
            hedges: 0,
            budget_exhausted: 1,
            deadlines_exceeded: 0,
            budget_available: 14.0,
        }),
        latency_one_in: Some(4),
    }
}

#[test]
fn the_table_has_a_row_per_tier_and_endpoint() {
    let status = sample();
    let text = status.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("service api · strategy p2c_peak_ewma · revision 3"),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "3 endpoints: 2 healthy, 1 down · panic mode off · ejections so far: 0, downs: 1"
    );
    assert!(
        lines[2].starts_with("tier  endpoints  in rotation  health  load"),
        "{text}"
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["0", "2", "1", "70%", "70%"]
    );
    assert!(lines[5].starts_with("endpoint"), "{text}");
    let b: Vec<&str> = lines[7].split_whitespace().collect();
    assert_eq!(
        &b[..5],
        ["b", "127.0.0.1:9000", "0", "100", "down"],
        "{text}"
    );
    assert!(lines[7].contains("unreachable"), "{text}");
    assert_eq!(
        lines[9],
        "retries: 4 of 40 requests · 0 hedges · 1 refused by the budget · 0 past deadline · budget 14.0"
    );
    assert_eq!(
        lines[10],
        "latency histograms: 1 answer in 4 timed, each counted 4 times"
    );
    assert_eq!(lines.len(), 11, "{text}");
}

#[cfg(feature = "serde")]
#[test]
fn the_json_round_trips() {
    let status = sample();
    let json = serde_json::to_string(&status).unwrap();
    assert!(json.contains(r#""state":"down""#), "{json}");
    let back: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(back, status);
}

#[test]
fn labels_are_snake_case_and_ordered_by_availability() {
    let labels: Vec<&str> = EndpointState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        labels,
        [
            "healthy",
            "slow_start",
            "draining",
            "failing_checks",
            "on_trial",
            "ejected",
            "down"
        ]
    );
    assert!(EndpointState::ALL.windows(2).all(|w| w[0] < w[1]));
    assert!(EndpointState::Draining.in_rotation());
    assert!(!EndpointState::OnTrial.in_rotation());
}
