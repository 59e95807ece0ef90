//! What the node's dispatcher tells a run besides cancelling it, and the run's cost: the
//! price history (reloaded on SIGUSR2, which `--list` sends after keeping new prices, as
//! Go's does), the cost of the run so far from it (prices.rs), and SIGUSR1, which saves
//! the logs so far at once (the log-updates helper, run/supervisor.rs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

use crate::config::NodeSetup;
use crate::prices::{InstancePrice, cost, instance_type_price, load_prices, normalize};

/// The run's price history, and what its cost is reckoned from.
#[derive(Clone)]
pub(super) struct RunCost {
    started: SystemTime,
    history: Arc<Mutex<Vec<InstancePrice>>>,
    /// The `InstanceType` price, for as long as there is no history.
    fallback: Option<f64>,
    file: PathBuf,
}

impl RunCost {
    pub(super) fn new(node: &NodeSetup) -> RunCost {
        RunCost {
            started: SystemTime::now(),
            history: Arc::default(),
            fallback: node.instance_type.as_deref().and_then(instance_type_price),
            file: node.prices_file(),
        }
    }

    /// Read the kept price history again; say each price newer than what was known.
    pub(super) fn reload(&self, say: &dyn Fn(&str)) {
        let loaded = match load_prices(&self.file) {
            Ok(loaded) => loaded,
            Err(e) => return say(&format!("loadPrices: {e}")),
        };
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let known = history.first().map(|p| p.start);
        let merged = normalize(loaded.into_iter().chain(history.drain(..)).collect());
        for price in merged.iter().rev() {
            if known.is_none_or(|k| price.start > k) {
                say(&format!(
                    "Instance price changed to {} at {}",
                    crate::prices::price_text(price.price),
                    crate::rfc3339::format_timestamp(price.start)
                ));
            }
        }
        *history = merged;
    }

    /// The cost of the run until now; None when no price is known.
    pub(super) fn so_far(&self) -> Option<f64> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        cost(&history, self.fallback, self.started, SystemTime::now())
    }
}

/// SIGUSR1 and SIGUSR2, turned into a save of the logs so far and a reload of the prices,
/// on a thread of its own; stopped by `stop`.
pub(super) struct NodeSignals {
    handle: Option<Handle>,
    pub save_now: Receiver<()>,
}

impl NodeSignals {
    pub(super) fn start(
        cost: RunCost,
        say: impl Fn(&str) + Send + 'static,
    ) -> std::io::Result<NodeSignals> {
        let (tx, save_now): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let mut signals = Signals::new([SIGUSR1, SIGUSR2])?;
        let handle = signals.handle();
        std::thread::Builder::new()
            .name("node-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    match signal {
                        SIGUSR1 => {
                            // One pending ask is enough.
                            let _ = tx.try_send(());
                        }
                        _ => cost.reload(&say),
                    }
                }
            })?;
        Ok(NodeSignals {
            handle: Some(handle),
            save_now,
        })
    }

    /// No signals at all (their thread could not start).
    pub(super) fn none() -> NodeSignals {
        NodeSignals {
            handle: None,
            save_now: crossbeam_channel::never(),
        }
    }
}

impl Drop for NodeSignals {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.close();
        }
    }
}
