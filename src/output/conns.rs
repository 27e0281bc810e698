//! Who holds the listener's connections: at most `max` at once and `per_peer` from one
//! address. A new connection that finds no room takes the place of the oldest idle one
//! (connected with no request in flight) of the peer holding the most: first one that never
//! sent a whole request (a client that sends nothing, or its headers a byte at a time), then a
//! keep-alive between two requests. So neither thousands of idle sockets nor slow clients can
//! keep `/healthz` and `/metrics` out: a probe's connection sends its request at once and is
//! answered, and a scraper's kept-alive connection outlives the idle ones. Only when every
//! connection has a request in flight is a new one refused.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// The connections held, and the limits.
#[derive(Debug)]
pub struct Conns {
    max: usize,
    per_peer: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    next_id: u64,
    /// At most `max` (a few hundred): searched in place.
    list: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    peer: IpAddr,
    since: Instant,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

impl Entry {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) & IN_FLIGHT_MASK == 0
    }

    /// Whether a whole request came on it.
    fn served(&self) -> bool {
        self.busy.load(Ordering::Acquire) & SERVED != 0
    }
}

/// The high bit of a connection's count: it has had a request.
const SERVED: usize = 1 << (usize::BITS - 1);
const IN_FLIGHT_MASK: usize = SERVED - 1;

/// Why a connection was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every connection of its address has a request in flight.
    PeerBusy,
    /// Every connection has a request in flight.
    AllBusy,
}

/// A connection's place, given up when dropped.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Conns>,
    id: u64,
    /// Requests in flight on the connection (see [`Counted`]).
    pub busy: Arc<AtomicUsize>,
    /// Cancelled when a new connection takes this one's place: close it at once.
    pub evict: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.conns.held.lock().unwrap_or_else(|e| e.into_inner());
        held.list.retain(|e| e.id != self.id);
    }
}

impl Conns {
    pub fn new(max: usize, per_peer: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            per_peer: per_peer.max(1),
            held: Mutex::new(Held::default()),
        })
    }

    /// How many connections are held now.
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a place for a connection from `peer`, evicting the oldest idle connection of
    /// that peer when it holds `per_peer`, or of the peer holding the most when `max` are
    /// held.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let of_peer = held.list.iter().filter(|e| e.peer == peer).count();
        let victim = if of_peer >= self.per_peer {
            Some(oldest_idle(&held.list, |e| e.peer == peer).ok_or(Refused::PeerBusy)?)
        } else if held.list.len() >= self.max {
            Some(busiest_peers_oldest_idle(&held.list).ok_or(Refused::AllBusy)?)
        } else {
            None
        };
        if let Some(i) = victim {
            held.list.swap_remove(i).evict.cancel();
        }
        held.next_id += 1;
        let (id, busy, evict) = (
            held.next_id,
            Arc::new(AtomicUsize::new(0)),
            CancellationToken::new(),
        );
        held.list.push(Entry {
            id,
            peer,
            since: Instant::now(),
            busy: busy.clone(),
            evict: evict.clone(),
        });
        Ok(Slot {
            conns: self.clone(),
            id,
            busy,
            evict,
        })
    }
}

/// The index of the oldest connection with no request in flight among those `of` picks, one
/// that never had a request first.
fn oldest_idle(list: &[Entry], of: impl Fn(&Entry) -> bool) -> Option<usize> {
    list.iter()
        .enumerate()
        .filter(|(_, e)| of(e) && e.idle())
        .min_by_key(|(_, e)| (e.served(), e.since))
        .map(|(i, _)| i)
}

/// The oldest idle connection of the peer holding the most idle ones.
fn busiest_peers_oldest_idle(list: &[Entry]) -> Option<usize> {
    let mut counts: Vec<(IpAddr, usize)> = Vec::new();
    for e in list.iter().filter(|e| e.idle()) {
        match counts.iter_mut().find(|(p, _)| *p == e.peer) {
            Some(c) => c.1 += 1,
            None => counts.push((e.peer, 1)),
        }
    }
    let (peer, _) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    oldest_idle(list, |e| e.peer == peer)
}

/// A hyper service that counts the requests in flight on its connection (from the request's
/// headers to its response).
pub struct Counted<S> {
    pub inner: S,
    pub busy: Arc<AtomicUsize>,
}

/// Takes one off the count when the request is answered (or dropped).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, R> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.busy.fetch_or(SERVED, Ordering::AcqRel);
        let in_flight = InFlight(self.busy.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(in_flight);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_connection_takes_the_place_of_the_oldest_idle_one() {
        let conns = Conns::new(4, 3);
        let a = ip("10.0.0.1");
        let b = ip("10.0.0.2");
        let a1 = conns.admit(a).unwrap();
        let a2 = conns.admit(a).unwrap();
        let a3 = conns.admit(a).unwrap();
        // The peer's limit: its oldest idle one goes.
        let a4 = conns.admit(a).unwrap();
        assert!(a1.evict.is_cancelled());
        assert!(!a2.evict.is_cancelled());
        assert_eq!(conns.len(), 3);
        // A busy connection is never evicted: a2 has a request in flight.
        a2.busy.fetch_add(1, Ordering::AcqRel);
        let _a5 = conns.admit(a).unwrap();
        assert!(a3.evict.is_cancelled() && !a2.evict.is_cancelled());
        // Another peer fills the last place; then the global limit takes from the peer
        // holding the most idle ones (a), never from b.
        let b1 = conns.admit(b).unwrap();
        assert_eq!(conns.len(), 4);
        let _b2 = conns.admit(b).unwrap();
        assert!(a4.evict.is_cancelled() && !b1.evict.is_cancelled());
        assert_eq!(conns.len(), 4);
        // A dropped slot frees its place.
        drop(b1);
        assert_eq!(conns.len(), 3);
    }

    #[test]
    fn a_connection_that_was_served_outlives_one_that_never_sent_a_request() {
        let conns = Conns::new(3, 3);
        let a = ip("10.0.0.1");
        let scraper = conns.admit(a).unwrap();
        // It had a request (now answered): a keep-alive between two scrapes.
        scraper.busy.fetch_or(SERVED, Ordering::AcqRel);
        let idle1 = conns.admit(a).unwrap();
        let idle2 = conns.admit(a).unwrap();
        let _idle3 = conns.admit(a).unwrap();
        assert!(idle1.evict.is_cancelled() && !scraper.evict.is_cancelled());
        let _idle4 = conns.admit(a).unwrap();
        assert!(idle2.evict.is_cancelled() && !scraper.evict.is_cancelled());
    }

    #[test]
    fn only_when_every_connection_is_busy_is_a_new_one_refused() {
        let conns = Conns::new(2, 2);
        let a = ip("::1");
        let s1 = conns.admit(a).unwrap();
        let s2 = conns.admit(a).unwrap();
        s1.busy.fetch_add(1, Ordering::AcqRel);
        s2.busy.fetch_add(1, Ordering::AcqRel);
        assert_eq!(conns.admit(a).unwrap_err(), Refused::PeerBusy);
        assert_eq!(conns.admit(ip("::2")).unwrap_err(), Refused::AllBusy);
        s2.busy.fetch_sub(1, Ordering::AcqRel);
        assert!(conns.admit(ip("::2")).is_ok());
        assert!(s2.evict.is_cancelled());
    }
}
