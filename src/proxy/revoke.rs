//! An answer that ends when its key is revoked (or leaves the key file) while it streams.

use crate::keys::state::KeyState;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::sync::futures::OwnedNotified;

pin_project_lite::pin_project! {
    /// Wakes a waiting response body when its key is revoked. The wake-up is registered only
    /// once the body has to wait (not for an answer whose frames are already there), and again
    /// only when the waiting task changes or a revoke fired since (undone by a restore before
    /// this poll: the registration it woke is used up): one lock of the key's waiter list per
    /// stream, plus one when it ends. While frames flow, each poll reads the flag.
    pub struct RevokeWatch {
        state: Arc<KeyState>,
        #[pin]
        woken: Option<OwnedNotified>,
        waker: Option<Waker>,
        // The key's wake count when `woken` was made.
        seen: u32,
    }
}

impl RevokeWatch {
    pub fn is_revoked(&self) -> bool {
        self.state.revocation.is_revoked()
    }

    /// Why the key's requests end (revoked or disabled), once they do.
    pub fn ended(&self) -> Option<crate::keys::state::Ended> {
        self.state.revocation.ended()
    }

    /// `Ready` once the key is revoked; otherwise registers `cx` to be woken when it is.
    pub fn poll_revoked(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let revocation = &this.state.revocation;
        if revocation.is_revoked() {
            return Poll::Ready(());
        }
        let wakes = revocation.wakes();
        let fresh = this.woken.is_some() && wakes == *this.seen;
        if fresh && this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if !fresh {
            // The first wait, or a revoke fired and was undone since: a new registration.
            *this.seen = wakes;
            this.woken.set(Some(revocation.watch()));
        }
        if let Some(woken) = this.woken.as_mut().as_pin_mut() {
            // Ready only for a revoke after `seen` was read: the flag says whether it stands;
            // if a restore undid it already, the next poll registers anew.
            if woken.poll(cx).is_ready() {
                if revocation.is_revoked() {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        *this.waker = Some(cx.waker().clone());
        // Revoked between the first check and the registration: seen here.
        if revocation.is_revoked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl RevokeWatch {
    /// A watch on the key whose runtime state is `state`.
    pub fn new(state: &Arc<KeyState>) -> RevokeWatch {
        RevokeWatch {
            state: Arc::clone(state),
            woken: None,
            waker: None,
            seen: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::state::Ended;
    use crate::server::nudge::counting_waker;
    use std::sync::atomic::Ordering;

    /// A disable undone by an enable before the waiting request looked: the request keeps
    /// waiting, and the next disable still wakes and ends it.
    #[test]
    fn a_revoke_undone_before_the_poll_leaves_the_watch_armed() {
        let state = Arc::new(KeyState::default());
        let mut watch = std::pin::pin!(RevokeWatch::new(&state));
        let (waker, count) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(watch.as_mut().poll_revoked(&mut cx).is_pending());
        state.revocation.revoke(Ended::Disabled);
        state.revocation.restore();
        assert_eq!(count.load(Ordering::SeqCst), 1, "woken by the disable");
        assert!(
            watch.as_mut().poll_revoked(&mut cx).is_pending(),
            "enabled again"
        );
        state.revocation.revoke(Ended::Disabled);
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "woken by the second disable"
        );
        assert!(watch.as_mut().poll_revoked(&mut cx).is_ready());
        assert_eq!(watch.ended(), Some(Ended::Disabled));
    }
}
