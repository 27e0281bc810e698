//! The life of an alert, as in Prometheus: pending (while its `for` duration runs) -> firing
//! -> resolved, at most one active instance per fingerprint, repeats of firing alerts, and
//! [`Ctx`], what a rule family is lent to work with: the time, the rules, the active alerts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::{Clocks, Scope};
use super::settings::Rules;
use super::vocabulary::{Alert, AlertName, Change, Labels, Loaded, fingerprint, labels};
use crate::derive::RunKey;

/// Fingerprints whose last resolution is kept (the oldest are forgotten beyond).
const RESOLVED_KEPT: usize = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Phase {
    Pending { since: i64 },
    Firing,
}

/// An alert that is pending or firing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Active {
    pub(super) alert: Alert,
    pub(super) state: Phase,
    /// When it was last notified (or, if never, when it fired).
    pub(super) last_notified: i64,
    /// Whether notifications go out for it (live and recent).
    pub(super) notify: bool,
    /// The run it is about (loss alerts), to resolve when that run ends.
    pub(super) run: Option<RunKey>,
    /// Last time its event recurred (event alerts).
    pub(super) last_seen: i64,
}

/// The active alerts and the last resolution of each fingerprint; part of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Lifecycle {
    pub(super) active: BTreeMap<String, Active>,
    /// When the last instance of each fingerprint resolved: the next one starts after it.
    resolved: BTreeMap<String, i64>,
}

/// When a condition holds: since when, how long it must hold before firing, and the time of
/// its newest evidence (what decides whether `watch` pages for it).
#[derive(Clone, Copy, Debug)]
pub(super) struct When {
    pub(super) since: i64,
    pub(super) for_ns: i64,
    pub(super) evidence: i64,
}

impl When {
    /// A condition seen in a sample or event at `ts`.
    pub(super) fn sample(ts: i64, for_ns: i64) -> When {
        When {
            since: ts,
            for_ns,
            evidence: ts,
        }
    }
}

impl Lifecycle {
    /// Takes on alerts that were firing when trainwatch stopped: a restart neither fires them
    /// again nor forgets them.
    pub(super) fn restore(&mut self, loaded: Vec<Loaded>, live: bool) {
        for l in loaded {
            let seen = l.last_notified.unwrap_or(l.alert.started_at);
            self.active.insert(
                l.alert.fingerprint.clone(),
                Active {
                    state: Phase::Firing,
                    last_notified: seen,
                    notify: live && l.live,
                    run: None,
                    last_seen: l.alert.started_at,
                    alert: l.alert,
                },
            );
        }
    }

    /// Agrees with the alerts the store holds as firing: one that another engine closed since
    /// is forgotten, one that another engine fired is taken on.
    pub(super) fn reconcile(&mut self, firing: Vec<Loaded>, live: bool) {
        let same = |a: &Active, l: &Loaded| a.alert.started_at == l.alert.started_at;
        self.active.retain(|fp, a| {
            !matches!(a.state, Phase::Firing)
                || firing
                    .iter()
                    .any(|l| l.alert.fingerprint == *fp && same(a, l))
        });
        let unknown = firing
            .into_iter()
            .filter(|l| {
                !self
                    .active
                    .get(&l.alert.fingerprint)
                    .is_some_and(|a| same(a, l))
            })
            .collect();
        self.restore(unknown, live);
    }

    /// Forgets the `for` durations that were running.
    pub(super) fn forget_pending(&mut self) {
        self.active
            .retain(|_, a| !matches!(a.state, Phase::Pending { .. }));
    }

    /// Only `watch` notifies: a resumed snapshot of another kind sends nothing.
    pub(super) fn notify_only_if(&mut self, live: bool) {
        for a in self.active.values_mut() {
            a.notify &= live;
        }
    }

    /// The firing alerts, most severe first.
    pub(super) fn firing(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .active
            .values()
            .filter(|a| matches!(a.state, Phase::Firing))
            .map(|a| a.alert.clone())
            .collect();
        v.sort_by_key(|a| (a.severity, a.started_at));
        v
    }
}

/// What a rule family works with, lent by the engine for one op: the rules, the time, and
/// the lifecycle of the alerts, with the changes it makes.
pub(super) struct Ctx<'a> {
    pub(super) rules: &'a Rules,
    /// The data root the disk probe measures: the `mount` label.
    pub(super) mount: &'a str,
    live: bool,
    clocks: &'a Clocks,
    life: &'a mut Lifecycle,
    out: &'a mut Vec<Change>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        rules: &'a Rules,
        mount: &'a str,
        live: bool,
        clocks: &'a Clocks,
        life: &'a mut Lifecycle,
        out: &'a mut Vec<Change>,
    ) -> Self {
        Ctx {
            rules,
            mount,
            live,
            clocks,
            life,
            out,
        }
    }

    /// The time it is for the alerts about `container` ([`Clocks::now`]).
    pub(super) fn now(&self, container: Option<&str>) -> i64 {
        self.clocks.now(self.live, container)
    }

    /// The changes made so far in this op.
    pub(super) fn changes(&mut self) -> &mut Vec<Change> {
        self.out
    }

    /// A condition that holds at `when.since`: pending until `when.for_ns` has passed, then
    /// firing.
    pub(super) fn condition(
        &mut self,
        name: AlertName,
        labels: Labels,
        summary: String,
        when: When,
        now: i64,
    ) {
        let When {
            since,
            for_ns,
            evidence,
        } = when;
        let fp = fingerprint(&labels);
        // An instance that fires again after it resolved (a queue that stopped and runs again
        // with its offset still stuck) is a new one, begun after the last one ended: it never
        // reopens or shares the stored row of the old one.
        let since = match self.life.resolved.get(&fp) {
            Some(&ended) if since <= ended && !self.life.active.contains_key(&fp) => ended + 1,
            _ => since,
        };
        let a = self
            .life
            .active
            .entry(fp.clone())
            .or_insert_with(|| Active {
                alert: Alert {
                    fingerprint: fp,
                    alertname: name,
                    severity: name.severity(),
                    labels,
                    summary: summary.clone(),
                    started_at: since,
                    resolved_at: None,
                },
                state: Phase::Pending { since },
                last_notified: now,
                notify: false,
                run: None,
                last_seen: since,
            });
        if let Phase::Pending { since } = a.state {
            a.alert.summary = summary;
            if now.max(since) - since >= for_ns {
                a.state = Phase::Firing;
                a.last_notified = now;
                // In `watch` the clock is the wall clock (ticks): an alert whose newest
                // evidence is old (found in a container's old logs) is recorded without
                // paging anyone; a state that holds now (a queue down for hours) pages.
                a.notify = self.live && now - evidence <= self.rules.notify_backlog.0;
                self.out.push(Change::Fired {
                    alert: a.alert.clone(),
                    notify: a.notify,
                });
            }
        }
    }

    /// An event-like condition that fires at once; `run` is the run it is about.
    pub(super) fn fire_now(
        &mut self,
        name: AlertName,
        labels: Labels,
        summary: String,
        ts: i64,
        run: Option<RunKey>,
    ) {
        let fp = fingerprint(&labels);
        let recurring = self.life.active.contains_key(&fp);
        let now = self.now(labels.get("container").map(String::as_str));
        self.condition(name, labels, summary, When::sample(ts, 0), now);
        if let Some(a) = self.life.active.get_mut(&fp) {
            a.last_seen = a.last_seen.max(ts);
            if run.is_some() && (!recurring || a.run.is_none()) {
                a.run = run;
            }
        }
    }

    /// Whether an alert of `name` is pending or firing (a cheap test before building labels).
    pub(super) fn any_active(&self, name: AlertName) -> bool {
        self.life.active.values().any(|a| a.alert.alertname == name)
    }

    /// The active instance of `labels`, if any.
    pub(super) fn active(&self, labels: &Labels) -> Option<&Active> {
        self.life.active.get(&fingerprint(labels))
    }

    /// Resolves `name` for `container`, if active.
    pub(super) fn resolve_named(&mut self, name: AlertName, container: &str, at: i64) {
        if self.any_active(name) {
            self.resolve(&labels(name, &[("container", container)]), at);
        }
    }

    /// Resolves the active instance of `labels` with evidence from `at`. Evidence older than
    /// the instance (a line whose time stepped back) is about an earlier one: it resolves
    /// nothing.
    pub(super) fn resolve(&mut self, labels: &Labels, at: i64) {
        let fp = fingerprint(labels);
        let life = &mut *self.life;
        if life.active.get(&fp).is_none_or(|a| at < a.alert.started_at) {
            return;
        }
        let Some(a) = life.active.remove(&fp) else {
            return;
        };
        if let Phase::Firing = a.state {
            let mut alert = a.alert;
            let at = at.max(alert.started_at);
            alert.resolved_at = Some(at);
            if life.resolved.len() >= RESOLVED_KEPT
                && !life.resolved.contains_key(&fp)
                && let Some(oldest) = life
                    .resolved
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
            {
                life.resolved.remove(&oldest);
            }
            life.resolved.insert(fp, at);
            self.out.push(Change::Resolved {
                alert,
                notify: a.notify,
            });
        }
    }

    /// Resolves every active alert about `container` at `at` (it was removed long enough
    /// ago); one pending is dropped.
    pub(super) fn resolve_container(&mut self, container: &str, at: i64) {
        let about: Vec<Labels> = self
            .life
            .active
            .values()
            .filter(|a| a.alert.labels.get("container").map(String::as_str) == Some(container))
            .map(|a| a.alert.labels.clone())
            .collect();
        for l in about {
            self.resolve(&l, at);
        }
    }

    /// The active alerts in `scope`, each with the time it is for it: those about a
    /// container at that container's time, the others only when all are evaluated.
    pub(super) fn active_in(&self, scope: &Scope) -> Vec<(String, i64)> {
        self.life
            .active
            .iter()
            .filter_map(|(fp, a)| {
                let container = a.alert.labels.get("container").map(String::as_str);
                match container {
                    Some(c) if scope.holds(c) => Some((fp.clone(), self.now(Some(c)))),
                    None if *scope == Scope::All => Some((fp.clone(), self.now(None))),
                    _ => None,
                }
            })
            .collect()
    }

    /// The active alert with fingerprint `fp`.
    pub(super) fn get(&self, fp: &str) -> Option<&Active> {
        self.life.active.get(fp)
    }

    /// Notifies again the firing alerts in `scope` whose repeat interval has passed.
    pub(super) fn repeat(&mut self, scope: &Scope) {
        let repeat = self.rules.repeat_interval.0;
        for (fp, now) in self.active_in(scope) {
            let Some(a) = self.life.active.get_mut(&fp) else {
                continue;
            };
            if matches!(a.state, Phase::Firing) && a.notify && now - a.last_notified >= repeat {
                a.last_notified = now;
                self.out.push(Change::Repeat {
                    alert: a.alert.clone(),
                });
            }
        }
    }
}
