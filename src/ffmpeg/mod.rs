//! What relay hands FFmpeg: the raw format shared by the ingest, the pump
//! and the output, and the filter templates kept in `ffmpeg/` (embedded in
//! the binary so an installed relay needs nothing beside it).

pub mod child;
pub mod preflight;
pub mod supervisor;
pub mod zmq;

pub const OUTPUT_GRAPH: &str = include_str!("../../ffmpeg/output.graph");
pub const INGEST_VIDEO_FILTER: &str = include_str!("../../ffmpeg/ingest-video.filter");
pub const OFFLINE_VIDEO_FILTER: &str = include_str!("../../ffmpeg/offline-video.filter");
pub const OFFLINE_AUDIO_FILTER: &str = include_str!("../../ffmpeg/offline-audio.filter");
pub const INGEST_AUDIO_FILTER: &str = include_str!("../../ffmpeg/ingest-audio.filter");

/// The common `-loglevel`: warnings and errors only, each tagged with its
/// level so our log forwarder can classify it.
pub const LOGLEVEL: &str = "level+warning";

/// What every FFmpeg child starts with: no banner, no stdin, no periodic
/// stats line, and the log level above.
pub const COMMON_ARGS: &[&str] = &[
    "-hide_banner",
    "-nostdin",
    "-nostats",
    "-loglevel",
    LOGLEVEL,
];

/// Fills `{NAME}` placeholders, drops `#` comment lines and joins the rest
/// into one line.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut text: String = template
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for (name, value) in vars {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_joins() {
        let t = "# comment\nscale={W}:{H},\n  fps={F}\n";
        let vars = [
            ("W", "1280".into()),
            ("H", "720".into()),
            ("F", "30".into()),
        ];
        assert_eq!(render(t, &vars), "scale=1280:720,fps=30");
    }

    #[test]
    fn templates_have_no_unfilled_placeholders_once_rendered() {
        let vars = [
            ("WIDTH", "1280".to_string()),
            ("HEIGHT", "720".into()),
            ("FPS", "30".into()),
            ("SAMPLERATE", "48000".into()),
            ("MAP", "1".into()),
            ("ZMQ_PORT", "5559".into()),
        ];
        for t in [
            OUTPUT_GRAPH,
            INGEST_VIDEO_FILTER,
            OFFLINE_VIDEO_FILTER,
            INGEST_AUDIO_FILTER,
            OFFLINE_AUDIO_FILTER,
        ] {
            let r = render(t, &vars);
            assert!(!r.contains('{'), "{r}");
        }
    }
}
