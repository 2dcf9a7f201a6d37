//! A connection's activity bookkeeping: what its requests tell its driver.

use super::*;

#[test]
fn a_response_waiting_through_parts_plus_one_periods_is_stalled() {
    let a = Activity::new();
    let mut s = a.begin();
    s.handed();
    for _ in 0..PARTS {
        assert!(!a.next_period());
    }
    assert!(a.next_period(), "waited more than PARTS whole periods");
    s.polled();
    for _ in 0..(2 * SLOTS) {
        assert!(!a.next_period());
    }
}

#[test]
fn responses_that_keep_moving_are_never_stalled() {
    let a = Activity::new();
    let mut s = a.begin();
    for _ in 0..(4 * SLOTS) {
        s.handed();
        assert!(!a.next_period());
        s.polled();
    }
    drop(s);
    assert!(a.idle_since().is_some());
}

#[test]
fn idle_only_with_no_open_request() {
    let a = Activity::new();
    assert_eq!(a.idle_since(), Some(a.start));
    let s1 = a.begin();
    let s2 = a.begin();
    assert_eq!(a.idle_since(), None);
    drop(s1);
    assert_eq!(a.idle_since(), None);
    drop(s2);
    assert!(a.idle_since().is_some());
}

/// A client that cancels its requests before their answer, more than `CANCEL_LIMIT` of them
/// and more than it lets be answered, is abusive; answered requests, and cancels that stay
/// fewer than them, are not.
#[test]
fn cancels_beyond_the_limit_and_the_answers_are_abusive() {
    let a = Activity::new();
    for _ in 0..CANCEL_LIMIT {
        drop(a.begin());
    }
    assert!(!a.abusive(), "up to the limit");
    let mut answered: Vec<Exchange> = (0..(2 * CANCEL_LIMIT)).map(|_| a.begin()).collect();
    for e in &mut answered {
        e.answered();
        e.answered(); // once each
    }
    drop(answered); // answered, then ended: not cancels
    for _ in 0..CANCEL_LIMIT {
        drop(a.begin());
    }
    assert!(!a.abusive(), "as many cancelled as answered");
    drop(a.begin());
    assert!(
        a.abusive(),
        "more cancelled than answered, beyond the limit"
    );
}
