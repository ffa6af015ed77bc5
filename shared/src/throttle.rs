//! Throttling sign-ins and sign-ups, so a password cannot be guessed at speed and accounts cannot
//! be created in bulk: failed logins are counted per email and per client address, registrations
//! per client address, each in a 15-minute window kept in the store (conditional writes, like the
//! rate limit), so the counts hold across every Lambda instance.

use time::OffsetDateTime;

use crate::error::{GatewayError, LimitError};
use crate::state::AppState;
use crate::store::Throttle;

/// The window counts are kept in.
pub const WINDOW_SECS: i64 = 15 * 60;
/// Failed logins of one email per window, past which its logins are refused.
pub const FAILED_LOGINS_PER_EMAIL: u64 = 10;
/// Failed logins from one client address per window.
pub const FAILED_LOGINS_PER_ADDRESS: u64 = 50;
/// Registrations from one client address per window.
pub const REGISTRATIONS_PER_ADDRESS: u64 = 20;

fn throttle(kind: &'static str, subject: &str, limit: u64, now: OffsetDateTime) -> Throttle {
    let unix = now.unix_timestamp();
    let window = unix.div_euclid(WINDOW_SECS);
    Throttle {
        kind,
        subject: subject.to_owned(),
        window,
        limit,
        // Clean-up only: the window is in the key.
        expires_at: (window + 1) * WINDOW_SECS + 3600,
    }
}

fn refused(now: OffsetDateTime) -> GatewayError {
    let unix = now.unix_timestamp();
    let reset_secs = u64::try_from(WINDOW_SECS - unix.rem_euclid(WINDOW_SECS)).unwrap_or(60);
    LimitError::Throttled { reset_secs }.into()
}

fn login_counters(email: &str, address: &str, now: OffsetDateTime) -> [Throttle; 2] {
    [
        throttle("login-email", email, FAILED_LOGINS_PER_EMAIL, now),
        throttle("login-address", address, FAILED_LOGINS_PER_ADDRESS, now),
    ]
}

/// Refuses a login (429) when its email or its client address failed too often lately.
pub async fn check_login(state: &AppState, email: &str, address: &str) -> Result<(), GatewayError> {
    let now = state.clock.now();
    let meter = state.stores.meter.as_ref();
    let [by_email, by_address] = login_counters(email, address, now);
    let (email_count, address_count) =
        tokio::try_join!(meter.throttled(&by_email), meter.throttled(&by_address))?;
    if email_count >= by_email.limit || address_count >= by_address.limit {
        return Err(refused(now));
    }
    Ok(())
}

/// Counts a failed login against its email and its client address.
pub async fn failed_login(state: &AppState, email: &str, address: &str) {
    let now = state.clock.now();
    let meter = state.stores.meter.as_ref();
    let [by_email, by_address] = login_counters(email, address, now);
    let (a, b) = tokio::join!(meter.throttle(&by_email), meter.throttle(&by_address));
    if let Err(error) = a.and(b) {
        tracing::warn!(%error, "a failed login could not be counted");
    }
}

/// Takes a registration from `address` out of its window's allowance, or refuses it (429).
pub async fn registration(state: &AppState, address: &str) -> Result<(), GatewayError> {
    let now = state.clock.now();
    let counter = throttle("register-address", address, REGISTRATIONS_PER_ADDRESS, now);
    if state.stores.meter.throttle(&counter).await? {
        Ok(())
    } else {
        Err(refused(now))
    }
}
