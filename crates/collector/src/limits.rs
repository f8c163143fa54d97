//! Rate limits (token buckets per token, and one for enrollment) and the memory budget for
//! request bodies and response pages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by name. Each take refills the bucket for the time passed (`rate` per second,
/// at most `burst`) and takes `n`, or says how long to wait. Buckets full again are forgotten,
/// so the map holds only the names seen recently (bounded by the tokens in the database).
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Take `n` from `name`'s bucket; `Err(wait)` (nothing taken) when there is not enough.
    pub fn take(&self, name: &str, n: u64, rate: u64, burst: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let (rate, burst, n) = (rate.max(1) as f64, burst.max(1) as f64, n as f64);
        let mut m = self.buckets.lock().expect("limiter poisoned");
        if m.len() > 100_000 {
            m.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = m.entry(name.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        // A request bigger than the burst is allowed from a full bucket (it then owes).
        if b.tokens >= n || b.tokens >= burst {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((n.min(burst) - b.tokens) / rate).max(0.001),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::default();
        for _ in 0..5 {
            l.take("a", 1, 1, 5).unwrap();
        }
        let wait = l.take("a", 1, 1, 5).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        l.take("b", 1, 1, 5).unwrap();
    }
}
