//! The fault verbs that act on an environment alone (NATS nodes, links, workers, processor),
//! shared by the scenario runner and the load test: a fault means the same thing in both.
//! The runner adds the verbs that need a scenario run (its client and history, worker
//! processes that crash, replay workers).

use std::time::Duration;

use super::spec::{Link, Verb};
use crate::env::Environment;

/// The fault proxies of `link` (the runner asks for them whenever a fault names the link).
fn proxied(env: &Environment, link: Link) -> Result<&crate::netfault::ProxiedLink, String> {
    env.link(link == Link::Gateway).ok_or_else(|| format!("the {link:?} link has no fault proxies"))
}

/// Applies `verb` to `env` (`undo` = false) or undoes it (`undo` = true); `workers` is how many
/// in-process workers `worker_kill` starts again. A verb that needs a scenario run (client
/// retries, republishing with a history, crashing worker processes, replays) is an error here.
pub async fn apply(verb: &Verb, undo: bool, env: &mut Environment, workers: usize) -> Result<(), String> {
    match (verb, undo) {
        (Verb::ProcessorDown, flag) => {
            for w in env.workers() {
                w.faults().processor_unavailable.store(!flag, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        (Verb::ProcessorLatency { ms }, undo) => {
            let processor = env.processor();
            let mut config = processor.config();
            config.delay_before_effect_ms = if undo { 0 } else { *ms };
            processor.set_config(config);
            Ok(())
        }
        (Verb::WorkerKill, false) => {
            while !env.workers().is_empty() {
                env.take_worker(0).kill();
            }
            Ok(())
        }
        (Verb::WorkerKill, true) => {
            for _ in 0..workers {
                env.start_worker().await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        (Verb::Poison { count }, false) => {
            let js = env.bridge().jetstream().clone();
            let subject = env.bridge_config().subject_template(nats_bridge::catalogue::ops::authorize());
            for i in 0..*count {
                js.publish(subject.clone(), format!("{{poison {i}").into()).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        (Verb::WorkerLatency { latency }, undo) => {
            let value = (!undo).then(|| latency.clone());
            for w in env.workers() {
                *w.faults().latency.lock().unwrap_or_else(|p| p.into_inner()) = value.clone();
            }
            Ok(())
        }
        (Verb::WorkerErrors { rate }, undo) => {
            for w in env.workers() {
                *w.faults().error_rate.lock().unwrap_or_else(|p| p.into_inner()) = (!undo).then_some(*rate);
            }
            Ok(())
        }
        (Verb::DuplicateReplies, undo) => {
            for w in env.workers() {
                w.faults().duplicate_replies.store(!undo, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        (Verb::DropReplies, undo) => {
            for w in env.workers() {
                w.faults().drop_replies.store(!undo, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        (Verb::NetLatency { link, base_ms, jitter_ms }, undo) => {
            let link = proxied(env, *link)?;
            match undo {
                false => link.set_latency(Duration::from_millis(*base_ms), Duration::from_millis(*jitter_ms)),
                true => link.clear_latency(),
            }
            Ok(())
        }
        (Verb::NetCut { link }, undo) => {
            let link = proxied(env, *link)?;
            if undo {
                link.restore()
            } else {
                link.cut()
            }
            Ok(())
        }
        (Verb::NetHold { link }, undo) => {
            let link = proxied(env, *link)?;
            if undo {
                link.release()
            } else {
                link.hold()
            }
            Ok(())
        }
        (Verb::NatsRestart { node: Some(node) }, false) => env.nats().restart(node).await.map_err(|e| e.to_string()),
        (Verb::NatsRestart { node: None }, false) => env.nats().restart_all().await.map_err(|e| e.to_string()),
        (Verb::NodeKill { node }, false) => env.nats().kill(node).await.map_err(|e| e.to_string()),
        (Verb::NodeKill { node }, true) => env.nats().start_node(node).await.map_err(|e| e.to_string()),
        (Verb::Partition { node }, false) => env.nats().partition(node).await.map_err(|e| e.to_string()),
        (Verb::Partition { node }, true) => env.nats().heal(node).await.map_err(|e| e.to_string()),
        (Verb::Pause { node }, false) => env.nats().pause(node).await.map_err(|e| e.to_string()),
        (Verb::Pause { node }, true) => env.nats().unpause(node).await.map_err(|e| e.to_string()),
        (Verb::RollingRestart, false) => env.nats().rolling_restart().await.map_err(|e| e.to_string()),
        (_, true) if !verb.needs_until() => Ok(()),
        (other, _) => Err(format!("{} needs a scenario run: it cannot be applied to an environment alone", other.name())),
    }
}
