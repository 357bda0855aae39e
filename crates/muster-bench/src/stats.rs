//! Latency distributions and the result records written to the JSON report.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A latency distribution: percentiles and points for the plot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// `(quantile, µs)` pairs, denser towards the tail, for the percentile plot.
    pub(crate) points: Vec<(f64, u64)>,
}

impl Latency {
    /// The distribution of `samples` (µs).
    pub(crate) fn of(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((n - 1) as f64 * q).round() as usize];
        // Quantiles 1 - 10^(-k/50): evenly spaced on the plot's "nines" axis, as far into the
        // tail as the sample count resolves, then the maximum.
        let mut points = Vec::new();
        for k in 0..=250 {
            let q = 1.0 - 10f64.powf(-f64::from(k) / 50.0);
            if (1.0 - q) * (n as f64) < 1.0 {
                break;
            }
            points.push((q, at(q)));
        }
        points.push((1.0, samples[n - 1]));
        Latency {
            count: n as u64,
            mean_us: samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64,
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: samples[n - 1],
            points,
        }
    }
}

/// Operations over a time, with their latencies.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Rate {
    pub(crate) operations: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
    pub(crate) latency: Latency,
    /// CPU time the server used during the run (user and system), milliseconds.
    #[serde(default)]
    pub(crate) server_cpu_ms: f64,
    /// CPU time the load generator used during the run, milliseconds.
    #[serde(default)]
    pub(crate) generator_cpu_ms: f64,
}

impl Rate {
    /// `operations` done in `elapsed`, with one latency sample per request (a request may carry
    /// several operations: a batch of renewals).
    pub(crate) fn new(operations: u64, errors: u64, elapsed: Duration, samples: Vec<u64>) -> Self {
        let seconds = elapsed.as_secs_f64();
        Rate {
            operations,
            errors,
            seconds,
            per_second: operations as f64 / seconds.max(1e-9),
            latency: Latency::of(samples),
            server_cpu_ms: 0.0,
            generator_cpu_ms: 0.0,
        }
    }

    /// Records the CPU time used between two readings of (server, generator) CPU time.
    pub(crate) fn cpu_between(&mut self, before: (f64, f64), after: (f64, f64)) {
        self.server_cpu_ms = after.0 - before.0;
        self.generator_cpu_ms = after.1 - before.1;
    }

    /// The server's and the generator's CPU time per operation, microseconds (none before it
    /// was measured).
    pub(crate) fn cpu_us_per_op(&self) -> Option<(f64, f64)> {
        let per_op = |ms: f64| ms * 1000.0 / self.operations as f64;
        (self.server_cpu_ms > 0.0 && self.operations > 0)
            .then(|| (per_op(self.server_cpu_ms), per_op(self.generator_cpu_ms)))
    }
}

impl Rate {
    /// The figures without the plot's points (for printing).
    pub(crate) fn without_points(mut self) -> Self {
        self.latency.points.clear();
        self
    }
}

/// Change → all of many watchers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Fanout {
    pub(crate) watchers: u64,
    pub(crate) changes: u64,
    /// Changes not seen by every watcher within the time limit.
    pub(crate) missed: u64,
    /// From sending the write until the last watcher had it, per change.
    pub(crate) all: Latency,
    /// From sending the write until each watcher had it.
    pub(crate) each: Latency,
    /// CPU time over the changes (the server's, the generator's), per change, in ms.
    #[serde(default)]
    pub(crate) cpu_ms_per_change: (f64, f64),
}

/// A client holding instances is killed: how long until a watcher saw all of them gone.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Detection {
    pub(crate) instances: u64,
    pub(crate) ttl_ms: u64,
    /// Instances whose removal the watcher saw (all of them, unless the time limit ran out).
    pub(crate) seen_gone: u64,
    /// From sending the client's last acknowledged renewal round until the watcher saw the last
    /// instance gone: the TTL plus the detection delay, plus the time the server took to renew
    /// the round (an upper bound of TTL + delay).
    pub(crate) last_gone_after_renewal_ms: f64,
    /// The same from the round's acknowledgement (every lease was renewed by then: a lower
    /// bound).
    #[serde(default)]
    pub(crate) last_gone_after_renewal_ack_ms: f64,
    /// The same, from the kill.
    pub(crate) last_gone_after_kill_ms: f64,
    /// From the kill until the first removal was seen.
    pub(crate) first_gone_after_kill_ms: f64,
}

/// Server memory with many instances registered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Memory {
    pub(crate) instances: u64,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_after_bytes: u64,
    pub(crate) bytes_per_instance: f64,
    /// The anonymous part (`RssAnon`: the heap, without file pages such as a memory-mapped
    /// database).
    #[serde(default)]
    pub(crate) anon_before_bytes: u64,
    #[serde(default)]
    pub(crate) anon_after_bytes: u64,
    #[serde(default)]
    pub(crate) anon_bytes_per_instance: f64,
    /// The same two after one lookup of every service.
    #[serde(default)]
    pub(crate) read_bytes_per_instance: f64,
    #[serde(default)]
    pub(crate) read_anon_bytes_per_instance: f64,
    /// The registration rate on the way (one run, same clients).
    pub(crate) register: Rate,
}

/// Every figure of one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SystemResults {
    pub(crate) system: String,
    pub(crate) version: String,
    pub(crate) register: Rate,
    pub(crate) renew: Rate,
    pub(crate) lookup: Rate,
    /// Lookups over Muster's gRPC API (none for etcd: its one API is gRPC).
    #[serde(default)]
    pub(crate) lookup_grpc: Rate,
    pub(crate) watch: Latency,
    pub(crate) fanout: Fanout,
    pub(crate) detection: Detection,
    pub(crate) memory: Memory,
    /// Another member led at the end of the run than at its start (clusters only): some
    /// operations went through a follower, or waited out an election.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) leader_moved: bool,
}

/// The element whose `key` is the median (the lower middle for an even count).
fn median_by<T: Clone + Default>(items: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map(|t| (*t).clone())
        .unwrap_or_default()
}

impl SystemResults {
    /// One system's figures over several rounds: each workload as measured in the round whose
    /// headline figure (a rate, a p99, a detection time) is the median of the rounds; memory
    /// from the first round (the only one that measures it).
    pub(crate) fn median_of(rounds: &[SystemResults]) -> SystemResults {
        let Some(first) = rounds.first() else {
            return SystemResults::default();
        };
        let pick = |f: &dyn Fn(&SystemResults) -> f64| median_by(rounds, f);
        SystemResults {
            system: first.system.clone(),
            version: first.version.clone(),
            register: pick(&|r| r.register.per_second).register,
            renew: pick(&|r| r.renew.per_second).renew,
            lookup: pick(&|r| r.lookup.per_second).lookup,
            lookup_grpc: pick(&|r| r.lookup_grpc.per_second).lookup_grpc,
            watch: pick(&|r| r.watch.p99_us as f64).watch,
            fanout: pick(&|r| r.fanout.all.p99_us as f64).fanout,
            detection: pick(&|r| r.detection.last_gone_after_renewal_ms).detection,
            memory: first.memory.clone(),
            leader_moved: rounds.iter().any(|r| r.leader_moved),
        }
    }

    /// The figures without the plots' points (what the result keeps of each round).
    pub(crate) fn without_points(mut self) -> Self {
        for l in [
            &mut self.register.latency,
            &mut self.renew.latency,
            &mut self.lookup.latency,
            &mut self.lookup_grpc.latency,
            &mut self.watch,
            &mut self.fanout.all,
            &mut self.fanout.each,
        ] {
            l.points.clear();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let l = Latency::of((1..=1000).rev().collect());
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_us, 501);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.max_us, 1000);
        assert!((l.mean_us - 500.5).abs() < 1e-9);
        // Points climb and stop where 1000 samples no longer resolve the tail.
        assert!(
            l.points
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(l.points.last(), Some(&(1.0, 1000)));
        assert!(
            l.points
                .iter()
                .all(|&(q, _)| q == 1.0 || q <= 0.999 + 1e-12)
        );
    }

    #[test]
    fn each_workload_comes_from_its_median_round() {
        let round = |rate: f64, p99: u64, detect: f64| {
            let mut r = SystemResults::default();
            r.register.per_second = rate;
            r.lookup.per_second = 10.0 * rate;
            r.watch.p99_us = p99;
            r.detection.last_gone_after_renewal_ms = detect;
            r.memory.instances = rate as u64;
            r
        };
        let m = SystemResults::median_of(&[
            round(3.0, 900, 10_040.0),
            round(1.0, 1200, 10_020.0),
            round(2.0, 700, 10_060.0),
        ]);
        assert_eq!(m.register.per_second, 2.0);
        assert_eq!(m.lookup.per_second, 20.0);
        assert_eq!(m.watch.p99_us, 900);
        assert_eq!(m.detection.last_gone_after_renewal_ms, 10_040.0);
        assert_eq!(m.memory.instances, 3, "memory from the first round");
        // Two rounds: the lower one; none: nothing.
        let two = SystemResults::median_of(&[round(5.0, 1, 0.0), round(4.0, 1, 0.0)]);
        assert_eq!(two.register.per_second, 4.0);
        assert_eq!(SystemResults::median_of(&[]).register.per_second, 0.0);
    }

    #[test]
    fn no_samples_no_figures() {
        let l = Latency::of(Vec::new());
        assert_eq!(l.count, 0);
        assert!(l.points.is_empty());
        let r = Rate::new(0, 3, Duration::from_secs(1), Vec::new());
        assert_eq!(r.per_second, 0.0);
        assert_eq!(r.errors, 3);
    }
}
