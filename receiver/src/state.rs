//! The receiver's decisions, apart from any I/O: when to connect, from which
//! LSN, and how long to back off. Events go in, commands come out; the task
//! in `lib.rs` only carries the commands out, so tests drive this without
//! sockets or clocks.
//!
//! ```text
//! Start{flushed} -> Connect{flushed+1}
//! Accepted{from} -> (streaming; failures reset)
//! Flushed{lsn}   -> (the resume point moves)
//! Broken / Refused -> Retry{after: capped exponential backoff with jitter}
//! Refused{NOT_RETAINED} -> Bootstrap           (a snapshot, then the tail)
//! Refused{NOT_READY}    -> Retry as after a broken link (it soon will be)
//! Bootstrapped{flushed} -> Connect{flushed+1}  (the log starts again there)
//! RetryDue       -> Connect{flushed+1}, or Bootstrap again after a failed one
//! Stop           -> (nothing more, ever)
//! ```

use std::time::Duration;

use ferry_proto::v1::refusal::Reason;
use ferry_wal::Lsn;

/// First delay before reconnecting after a failure.
pub const RECONNECT_DELAY_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// The delay doubles per failure in a row up to this.
pub const RECONNECT_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(5);

/// Reconnect delays: `min * 2^(failures - 1)`, capped at `max`, then a
/// random point in its upper half (jitter, so replicas that lost the same
/// primary do not come back in lockstep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: RECONNECT_DELAY_MIN_DEFAULT,
            max: RECONNECT_DELAY_MAX_DEFAULT,
        }
    }
}

impl Backoff {
    /// The delay cap after `failures` failures in a row (at least one).
    pub fn cap(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The receiver starts with this LSN flushed in its log.
    Start { flushed: Lsn },
    /// The primary accepted the hello and sends from `from`.
    Accepted { from: Lsn },
    /// Frames up to `lsn` are synced in the local log.
    Flushed { lsn: Lsn },
    /// The primary refused the hello.
    Refused { reason: Reason, message: String },
    /// The link failed: connecting, a stream error, silence, a bad frame.
    Broken { error: String },
    /// A snapshot was installed; the local log now ends at `flushed`.
    Bootstrapped { flushed: Lsn },
    /// The delay of the last [`Command::Retry`] is over.
    RetryDue,
    /// The receiver is told to stop.
    Stop,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open a stream and say hello, asking for `resume_from` next.
    Connect { resume_from: Lsn },
    /// Wait, then deliver [`Event::RetryDue`].
    Retry { after: Duration },
    /// Fetch and install a snapshot of the primary's state (it no longer
    /// holds the records after `flushed`); then deliver
    /// [`Event::Bootstrapped`], or [`Event::Broken`] if it failed.
    Bootstrap,
}

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Connecting,
    Streaming,
    /// Waiting to reconnect after a failure.
    Down,
    /// Waiting to reconnect after a refusal.
    Refused,
    /// Fetching and installing a snapshot.
    Bootstrapping,
    /// Waiting to fetch the snapshot again after a failure.
    BootstrapDown,
    Stopped,
}

/// The receiver's state machine (see the module docs).
#[derive(Debug, Clone)]
pub struct Machine {
    phase: Phase,
    flushed: Lsn,
    /// Failures since the last accepted hello.
    failures: u32,
    backoff: Backoff,
    rng: u64,
}

impl Machine {
    /// A machine whose jitter comes from `seed`.
    pub fn new(backoff: Backoff, seed: u64) -> Machine {
        Machine {
            phase: Phase::Idle,
            flushed: Lsn::ZERO,
            failures: 0,
            backoff,
            rng: seed | 1,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The last LSN flushed locally: the stream resumes after it.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn retry(&mut self, phase: Phase) -> Vec<Command> {
        self.phase = phase;
        self.failures = self.failures.saturating_add(1);
        let cap = if phase == Phase::Refused {
            // Refusals do not heal by themselves: ask again, slowly.
            self.backoff.max
        } else {
            self.backoff.cap(self.failures)
        };
        let half = cap / 2;
        let span = (cap - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        vec![Command::Retry {
            after: half + Duration::from_micros(jitter),
        }]
    }

    /// Feeds one event; returns what to do.
    ///
    /// # Panics
    ///
    /// If the flushed LSN would move backwards (the local log never shrinks
    /// while the receiver runs).
    pub fn on_event(&mut self, event: Event) -> Vec<Command> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        match event {
            Event::Start { flushed } => {
                self.flushed = flushed;
                self.phase = Phase::Connecting;
                vec![Command::Connect {
                    resume_from: flushed.next(),
                }]
            }
            Event::Accepted { from } => {
                if from != self.flushed.next() {
                    return self.on_event(Event::Broken {
                        error: format!(
                            "the primary offered lsn {from}, the log continues at {}",
                            self.flushed.next()
                        ),
                    });
                }
                self.phase = Phase::Streaming;
                self.failures = 0;
                Vec::new()
            }
            Event::Flushed { lsn } => {
                assert!(lsn >= self.flushed, "the flushed LSN only grows");
                self.flushed = lsn;
                Vec::new()
            }
            Event::Refused {
                reason: Reason::NotRetained,
                ..
            } => {
                self.phase = Phase::Bootstrapping;
                vec![Command::Bootstrap]
            }
            // A node that has not joined a cluster yet soon will: ask again
            // as after a broken link.
            Event::Refused {
                reason: Reason::NotReady,
                ..
            } => self.retry(Phase::Down),
            Event::Refused { .. } => self.retry(Phase::Refused),
            Event::Broken { .. } if self.phase == Phase::Bootstrapping => {
                self.retry(Phase::BootstrapDown)
            }
            Event::Broken { .. } => self.retry(Phase::Down),
            Event::Bootstrapped { flushed } => {
                // The log was started again: it may now end anywhere.
                self.flushed = flushed;
                self.failures = 0;
                self.phase = Phase::Connecting;
                vec![Command::Connect {
                    resume_from: flushed.next(),
                }]
            }
            Event::RetryDue => match self.phase {
                Phase::Down | Phase::Refused => {
                    self.phase = Phase::Connecting;
                    vec![Command::Connect {
                        resume_from: self.flushed.next(),
                    }]
                }
                Phase::BootstrapDown => {
                    self.phase = Phase::Bootstrapping;
                    vec![Command::Bootstrap]
                }
                _ => Vec::new(),
            },
            Event::Stop => {
                self.phase = Phase::Stopped;
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::new(Backoff::default(), 7)
    }

    fn retry_delay(commands: &[Command]) -> Duration {
        match commands {
            [Command::Retry { after }] => *after,
            other => panic!("expected one retry, got {other:?}"),
        }
    }

    fn broken() -> Event {
        Event::Broken {
            error: "reset".into(),
        }
    }

    #[test]
    fn start_connects_after_the_flushed_lsn() {
        let mut m = machine();
        assert_eq!(
            m.on_event(Event::Start { flushed: Lsn(41) }),
            vec![Command::Connect {
                resume_from: Lsn(42)
            }]
        );
        assert_eq!(m.phase(), Phase::Connecting);
    }

    #[test]
    fn receiver_resumes_after_partition_from_what_it_flushed() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(0) });
        assert!(m.on_event(Event::Accepted { from: Lsn(1) }).is_empty());
        m.on_event(Event::Flushed { lsn: Lsn(500) });
        m.on_event(Event::Flushed { lsn: Lsn(900) });
        retry_delay(&m.on_event(broken()));
        assert_eq!(m.phase(), Phase::Down);
        assert_eq!(
            m.on_event(Event::RetryDue),
            vec![Command::Connect {
                resume_from: Lsn(901)
            }]
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(0) });
        let backoff = Backoff::default();
        for failure in 1..=12 {
            let delay = retry_delay(&m.on_event(broken()));
            let cap = backoff.cap(failure);
            assert!(
                delay >= cap / 2 && delay <= cap,
                "failure {failure}: {delay:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
            assert!(delay <= backoff.max);
            m.on_event(Event::RetryDue);
        }
        assert_eq!(backoff.cap(1), Duration::from_millis(100));
        assert_eq!(backoff.cap(2), Duration::from_millis(200));
        assert_eq!(backoff.cap(12), backoff.max);
    }

    #[test]
    fn jitter_spreads_replicas_apart() {
        let delays: Vec<Duration> = (1..=8)
            .map(|seed| {
                let mut m = Machine::new(Backoff::default(), seed);
                m.on_event(Event::Start { flushed: Lsn(0) });
                for _ in 0..5 {
                    m.on_event(broken());
                    m.on_event(Event::RetryDue);
                }
                retry_delay(&m.on_event(broken()))
            })
            .collect();
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 4, "delays {delays:?}");
    }

    #[test]
    fn an_accepted_hello_resets_the_backoff() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(0) });
        for _ in 0..6 {
            m.on_event(broken());
            m.on_event(Event::RetryDue);
        }
        assert_eq!(m.failures(), 6);
        m.on_event(Event::Accepted { from: Lsn(1) });
        assert_eq!(m.failures(), 0);
        let delay = retry_delay(&m.on_event(broken()));
        assert!(delay <= Backoff::default().cap(1));
    }

    /// A machine started at `flushed`, refused for `reason`: the delay
    /// before it asks again.
    fn refused(m: &mut Machine, flushed: Lsn, reason: Reason) -> Duration {
        m.on_event(Event::Start { flushed });
        retry_delay(&m.on_event(Event::Refused {
            reason,
            message: reason.as_str_name().into(),
        }))
    }

    #[test]
    fn a_primary_not_ready_yet_is_asked_again_soon() {
        let mut m = machine();
        let delay = refused(&mut m, Lsn(0), Reason::NotReady);
        assert_eq!(m.phase(), Phase::Down);
        assert!(delay <= Backoff::default().cap(1));
    }

    #[test]
    fn a_refusal_retries_at_the_longest_delay() {
        let mut m = machine();
        let delay = refused(&mut m, Lsn(10), Reason::OtherCluster);
        assert_eq!(m.phase(), Phase::Refused);
        assert!(delay >= Backoff::default().max / 2);
        assert_eq!(
            m.on_event(Event::RetryDue),
            vec![Command::Connect {
                resume_from: Lsn(11)
            }]
        );
    }

    #[test]
    fn an_offer_from_the_wrong_lsn_counts_as_a_broken_link() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(10) });
        retry_delay(&m.on_event(Event::Accepted { from: Lsn(5) }));
        assert_eq!(m.phase(), Phase::Down);
        assert_eq!(m.flushed(), Lsn(10));
    }

    #[test]
    fn a_stopped_machine_does_nothing_more() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(0) });
        m.on_event(broken());
        m.on_event(Event::Stop);
        assert!(m.on_event(Event::RetryDue).is_empty());
        assert!(m.on_event(broken()).is_empty());
        assert_eq!(m.phase(), Phase::Stopped);
    }

    #[test]
    fn a_retry_that_is_due_while_connected_is_ignored() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(0) });
        m.on_event(Event::Accepted { from: Lsn(1) });
        assert!(m.on_event(Event::RetryDue).is_empty());
        assert_eq!(m.phase(), Phase::Streaming);
    }

    #[test]
    #[should_panic(expected = "the flushed LSN only grows")]
    fn the_flushed_lsn_never_moves_back() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(10) });
        m.on_event(Event::Flushed { lsn: Lsn(9) });
    }

    #[test]
    fn a_resume_point_no_longer_retained_bootstraps_then_resumes_after_the_snapshot() {
        let mut m = machine();
        m.on_event(Event::Start { flushed: Lsn(10) });
        let refused = Event::Refused {
            reason: Reason::NotRetained,
            message: "gone".into(),
        };
        assert_eq!(m.on_event(refused), vec![Command::Bootstrap]);
        assert_eq!(m.phase(), Phase::Bootstrapping);
        // A broken transfer backs off, then fetches again (resuming).
        retry_delay(&m.on_event(broken()));
        assert_eq!(m.phase(), Phase::BootstrapDown);
        assert_eq!(m.on_event(Event::RetryDue), vec![Command::Bootstrap]);
        assert_eq!(
            m.on_event(Event::Bootstrapped {
                flushed: Lsn(5_000)
            }),
            vec![Command::Connect {
                resume_from: Lsn(5_001)
            }]
        );
        assert_eq!((m.phase(), m.failures()), (Phase::Connecting, 0));
        assert!(m.on_event(Event::Accepted { from: Lsn(5_001) }).is_empty());
        assert_eq!(m.phase(), Phase::Streaming);
    }
}
