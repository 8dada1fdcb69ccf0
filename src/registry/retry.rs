//! When and how long to wait before trying a registry request again.
//!
//! Exponential backoff with full jitter (so parallel uploads that failed together do not retry
//! together), bounded both by a number of attempts and by total time: a registry that stays
//! down must fail the push in about two minutes, not hold a CI job for half an hour.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Time after which no new attempt is started.
    pub total: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            total: Duration::from_secs(120),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    pub fn start(&self) -> Attempts<'_> {
        Attempts {
            policy: self,
            started: Instant::now(),
            attempt: 1,
        }
    }

    /// The longest the client waits for an answer (or for an upload to make progress) before it
    /// calls the attempt failed: at most `ceiling`, and at most half the retry budget, so a
    /// stalled registry is tried at least twice and still fails the push within `total`
    /// (about, plus one attempt in flight), not after a minute per attempt.
    pub fn stall_timeout(&self, ceiling: Duration) -> Duration {
        ceiling.min(self.total / 2).max(Duration::from_secs(1))
    }
}

/// Statuses that say "later" rather than "no": timeouts, throttling (ECR: 429
/// TOOMANYREQUESTS, older paths 503) and server errors.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and is ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The attempts of one request.
pub struct Attempts<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempt: u32,
}

impl Attempts<'_> {
    pub fn number(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next attempt, or `None` when attempts or time are used up.
    /// A server's `Retry-After` is honoured when it fits in the remaining time.
    pub fn next_delay(&mut self, server_asked: Option<Duration>) -> Option<Duration> {
        if self.attempt >= self.policy.max_attempts {
            return None;
        }
        let exponential = self
            .policy
            .base_delay
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.policy.max_delay);
        let jittered = exponential.mul_f64(fastrand::f64());
        let delay = server_asked.map_or(jittered, |asked| asked.max(jittered));
        let elapsed = self.started.elapsed();
        if elapsed + delay >= self.policy.total {
            return None;
        }
        self.attempt += 1;
        Some(delay)
    }

    /// Whether waiting `delay` before another attempt would run past the time budget.
    pub fn past_budget(&self, delay: Duration) -> bool {
        self.started.elapsed() + delay >= self.policy.total
    }

    /// The policy these attempts follow.
    pub fn policy(&self) -> &RetryPolicy {
        self.policy
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Attempts of a step inside this operation (the POST that starts an upload): counted on
    /// their own, but sharing this operation's time budget, so retries inside retries cannot
    /// multiply the time a failing registry holds the push.
    #[must_use]
    pub fn nested(&self) -> Self {
        Self {
            policy: self.policy,
            started: self.started,
            attempt: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_bounded_by_count() {
        let policy = RetryPolicy {
            max_attempts: 3,
            total: Duration::from_secs(60),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut attempts = policy.start();
        assert!(attempts.next_delay(None).is_some());
        assert!(attempts.next_delay(None).is_some());
        assert!(attempts.next_delay(None).is_none());
        assert_eq!(attempts.number(), 3);
    }

    #[test]
    fn retry_after_beyond_the_budget_gives_up() {
        let policy = RetryPolicy {
            max_attempts: 10,
            total: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut attempts = policy.start();
        assert_eq!(attempts.next_delay(Some(Duration::from_secs(60))), None);
        let delay = attempts.next_delay(Some(Duration::from_secs(2))).unwrap();
        assert!(delay >= Duration::from_secs(2));
    }

    #[test]
    fn delays_never_exceed_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 50,
            total: Duration::from_secs(10_000),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        let mut attempts = policy.start();
        for _ in 0..40 {
            assert!(attempts.next_delay(None).unwrap() <= Duration::from_millis(300));
        }
    }

    #[test]
    fn nested_attempts_share_the_time_budget() {
        let policy = RetryPolicy {
            max_attempts: 10,
            total: Duration::from_millis(50),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        let outer = policy.start();
        std::thread::sleep(Duration::from_millis(60));
        let mut inner = outer.nested();
        assert_eq!(inner.number(), 1);
        assert_eq!(inner.next_delay(None), None, "the outer budget is spent");
    }

    #[test]
    fn stall_timeout_fits_the_budget() {
        let policy = |secs| RetryPolicy {
            total: Duration::from_secs(secs),
            ..RetryPolicy::default()
        };
        let ceiling = Duration::from_secs(60);
        assert_eq!(policy(120).stall_timeout(ceiling), ceiling);
        assert_eq!(policy(10).stall_timeout(ceiling), Duration::from_secs(5));
        assert_eq!(policy(1).stall_timeout(ceiling), Duration::from_secs(1));
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(code).unwrap()));
        }
        for code in [400, 401, 403, 404, 409, 501] {
            assert!(!is_retryable_status(StatusCode::from_u16(code).unwrap()));
        }
    }
}
