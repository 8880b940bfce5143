//! The benchmark must keep working: run it briefly at a small size and
//! check it prints every row with a figure. Its numbers are not asserted
//! here (timings belong to the benchmark, not to the test suite), except
//! the one that is a behaviour: the output never reconnected.

use std::process::Command;

#[test]
fn bench_runs_and_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .args([
            "--cycles", "2", "--res", "180", "--fps", "30", "--hold", "1", "--window", "3",
        ])
        .env("RELAY_LOG", "warn")
        .output()
        .expect("run relay-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "| start → first output frame at the sink (180p30) |",
        "| … of which relay start → its output sends its first frame (180p30) |",
        "| go-live at the sink (what viewers see) |",
        "| go-live: output pipeline latency (switch done → sink) |",
        "| go-live, without the pipeline latency |",
        "| failover at the sink (what viewers see) |",
        "| failover: output pipeline latency (switch done → sink) |",
        "| failover, without the pipeline latency |",
        "| go-live: repeated (filler/duplicate) frames at the sink, ±1 s |",
        "| failover: largest frame-interval (pts) deviation at the sink, ±1 s |",
        "| failover: frame arrival jitter at the sink (std. dev.), ±1 s |",
        "| steady live (180p30, 3 s)",
        "| daemon CPU while live (180p30, % of one core) |",
        "| daemon RSS while live (180p30; worst = peak) |",
        "| whole pipeline CPU while live (180p30: daemon + FFmpeg children) |",
        "| naive design CPU while live (180p30: one FFmpeg) |",
        "| relay / naive CPU (180p30) |",
        "| go-live (180p30): RTMP publisher / SRT caller |",
        "| failover, kill → offline on air (180p30): RTMP / SRT",
        "| failover at the sink, last new live picture → offline video (180p30): RTMP / SRT |",
        "| ingest CPU while on air (180p30, % of one core): RTMP / SRT |",
        "| SRT caller killed, the next one started at once (180p30)",
        "| whole tree CPU, one destination (180p30) |",
        "| whole tree CPU, three destinations in one relay (180p30) |",
        "| whole tree CPU, three relay instances of one destination each (180p30) |",
        "| three destinations / one destination, CPU (180p30) |",
        "| three destinations in one relay / three relay instances, CPU (180p30) |",
        "| daemon CPU with three destinations (180p30, % of one core) |",
        "| daemon RSS with three destinations (180p30; worst = peak) |",
        "| dropped destination: drop → picture again at its sink (180p30) |",
        "| the other two destinations meanwhile: largest frame gap",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        assert!(!line.contains("| – |"), "row without a figure: {line}");
        assert!(!line.contains("NaN"), "row without a figure: {line}");
    }
    assert!(
        stdout.contains("| output reconnections during the run | 0 |"),
        "the output reconnected during the benchmark:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("cycle 2/2"), "{stderr}");
}
