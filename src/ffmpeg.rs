//! What relay hands FFmpeg: the raw format shared by the ingest, the pump
//! and the output, and the filter templates kept in `ffmpeg/` (embedded in
//! the binary so an installed relay needs nothing beside it).

use crate::config::Config;

pub const OUTPUT_GRAPH: &str = include_str!("../ffmpeg/output.graph");
pub const INGEST_VIDEO_FILTER: &str = include_str!("../ffmpeg/ingest-video.filter");
pub const OFFLINE_VIDEO_FILTER: &str = include_str!("../ffmpeg/offline-video.filter");
pub const OFFLINE_AUDIO_FILTER: &str = include_str!("../ffmpeg/offline-audio.filter");
pub const INGEST_AUDIO_FILTER: &str = include_str!("../ffmpeg/ingest-audio.filter");

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

/// Raw audio is signed 16-bit little-endian stereo: 4 bytes a sample frame.
pub const AUDIO_BYTES_PER_SAMPLE: usize = 4;

/// The raw format on every pipe: yuv420p video and s16le stereo audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFormat {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub sample_rate: u32,
}

impl RawFormat {
    pub fn of(config: &Config) -> RawFormat {
        RawFormat {
            width: config.encoding.width,
            height: config.encoding.height,
            fps: config.encoding.fps,
            sample_rate: config.encoding.audio_samplerate,
        }
    }

    /// Bytes in one yuv420p frame.
    pub fn frame_bytes(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
    }

    /// A black yuv420p frame (Y = 16, U = V = 128: video range black), in
    /// a buffer of `pool` (so it counts against its ceiling), or, should the
    /// pool be at its ceiling, in its own mapping; either way its memory goes
    /// back when it is dropped.
    pub fn black_frame(&self, pool: &crate::frames::FramePool) -> bytes::Bytes {
        let luma = (self.width * self.height) as usize;
        let len = self.frame_bytes();
        let fill = |frame: &mut crate::frames::FrameBuf| {
            let room = frame.spare();
            room[..luma].fill(16);
            room[luma..len].fill(128);
            frame.advance(len);
        };
        if let Ok(Some(mut frame)) = pool.try_take() {
            fill(&mut frame);
            return pool.share(frame);
        }
        match crate::frames::FrameBuf::new(len) {
            Ok(mut frame) => {
                fill(&mut frame);
                bytes::Bytes::from_owner(frame)
            }
            Err(_) => {
                let mut frame = vec![128u8; len];
                frame[..luma].fill(16);
                frame.into()
            }
        }
    }

    pub fn video_size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

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

/// Splits the samples of each second into per-frame chunks without drift
/// when the rate is not a multiple of the frame rate (44100 / 30 fps…).
#[derive(Debug, Clone)]
pub struct SampleClock {
    rate: u64,
    fps: u64,
    tick: u64,
}

impl SampleClock {
    pub fn new(format: &RawFormat) -> SampleClock {
        SampleClock {
            rate: format.sample_rate as u64,
            fps: format.fps as u64,
            tick: 0,
        }
    }

    /// Samples belonging to the next frame.
    pub fn next_samples(&mut self) -> usize {
        let start = self.tick * self.rate / self.fps;
        self.tick += 1;
        let end = self.tick * self.rate / self.fps;
        (end - start) as usize
    }
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

    #[test]
    fn sample_clock_never_drifts() {
        let f = RawFormat {
            width: 2,
            height: 2,
            fps: 30,
            sample_rate: 44100,
        };
        let mut c = SampleClock::new(&f);
        let total: usize = (0..30 * 60).map(|_| c.next_samples()).sum();
        assert_eq!(total, 44100 * 60);
    }

    #[test]
    fn frame_sizes() {
        let f = RawFormat {
            width: 1280,
            height: 720,
            fps: 30,
            sample_rate: 48000,
        };
        assert_eq!(f.frame_bytes(), 1280 * 720 * 3 / 2);
        let pool = crate::frames::FramePool::new(f.frame_bytes(), 1, 1);
        let black = f.black_frame(&pool);
        assert_eq!(black.len(), f.frame_bytes());
        assert_eq!(pool.mapped(), 1);
        // At the pool's ceiling it still gets a frame, of its own.
        assert_eq!(f.black_frame(&pool).len(), f.frame_bytes());
    }
}
