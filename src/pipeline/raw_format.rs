//! The raw format on every pipe between relay and its FFmpeg children:
//! yuv420p video at the output's size and frame rate, s16le stereo audio at
//! its sample rate, and how a second of sound splits into frames.

use crate::config::Config;

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

    pub fn video_size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
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
    }
}
