//! The clock a process schedules by: the system's, or a test hook's — a
//! fixed instant, or simulated time running faster than real time. Which
//! one, and whether a release build may use a hook, is decided in `config`.

use std::time::Duration;

use jiff::Timestamp;

#[derive(Clone, Copy, Debug)]
pub enum Clock {
    System,
    /// `PARACHUTE_RUNNER_NOW`: now never moves.
    Fixed(Timestamp),
    /// `PARACHUTE_RUNNER_CLOCK`: `start` at the real instant `anchor`, then
    /// `speed` times faster than real time.
    Scaled {
        start: Timestamp,
        anchor: Timestamp,
        speed: u32,
    },
}

impl Clock {
    pub fn now(self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Fixed(t) => t,
            Clock::Scaled {
                start,
                anchor,
                speed,
            } => {
                let real = Timestamp::now().duration_since(anchor);
                let simulated = real
                    .checked_mul(i32::try_from(speed).unwrap_or(i32::MAX))
                    .unwrap_or(real);
                start.checked_add(simulated).unwrap_or(start)
            }
        }
    }

    /// How long to really wait for `simulated` to pass.
    pub fn real_duration(self, simulated: Duration) -> Duration {
        match self {
            Clock::Scaled { speed, .. } => simulated / speed.max(1),
            _ => simulated,
        }
    }
}
