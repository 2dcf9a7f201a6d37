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
    /// only when the waiting task changes: one lock of the key's waiter list per stream, plus
    /// one when it ends. While frames flow, each poll reads the flag.
    pub struct RevokeWatch {
        state: Arc<KeyState>,
        #[pin]
        woken: Option<OwnedNotified>,
        waker: Option<Waker>,
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
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if this.woken.is_none() {
            this.woken.set(Some(revocation.watch()));
        }
        if let Some(woken) = this.woken.as_mut().as_pin_mut() {
            if woken.poll(cx).is_ready() {
                return Poll::Ready(());
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
        }
    }
}
