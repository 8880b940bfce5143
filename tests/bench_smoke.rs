//! The benchmark must keep working: run it briefly at a small size and
//! check it prints every figure. Its numbers are not asserted here (timings
//! belong to the benchmark, not to the test suite), except the one that is
//! a behaviour: the output never reconnected.

use std::process::Command;

#[test]
fn bench_runs_and_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "bench", "--cycles", "2", "--res", "180", "--fps", "30", "--hold", "1",
        ])
        .env("RELAY_LOG", "warn")
        .output()
        .expect("run relay bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "| start → first output frame at a player |",
        "| go-live: publisher's first data → switch confirmed |",
        "| failover: last live frame → switch to offline confirmed |",
        "| daemon CPU while live",
        "| daemon RSS while live",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        assert!(!line.contains("| – |"), "row without a figure: {line}");
    }
    assert!(
        stdout.contains("| output reconnections during the run | 0 |"),
        "the output reconnected during the benchmark:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("cycle 2/2"), "{stderr}");
}
