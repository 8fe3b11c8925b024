//! Removes the containers, networks and store volumes of test processes that
//! died without cleaning up (killed with SIGKILL, say, so no `Drop` ran).
//!
//! Every container, network and store volume of the Docker backend carries, besides
//! [`ENV_LABEL`], the identity of the process that created it:
//! [`OWNER_PID_LABEL`], [`OWNER_START_LABEL`] (when that process started,
//! so a reused pid is not mistaken for the owner) and [`OWNER_SCOPE_LABEL`]
//! (boot id, pid namespace and user). [`reap_leftovers`] lists everything
//! labelled [`ENV_LABEL`] (one list call each for containers, networks and
//! volumes) and removes what belongs to a process of this scope that no
//! longer exists. A store volume normally goes with its container (it is
//! anonymous, and containers are removed with their volumes); the volume
//! sweep catches one whose container was removed some other way. Objects of another scope (another machine or container sharing
//! the engine, another user, an earlier boot) and objects without owner
//! labels are never touched: their owner cannot be checked from here.
//! [`NatsEnv::start`](super::NatsEnv::start) runs it before starting
//! containers.

use std::collections::HashMap;
use std::sync::OnceLock;

use futures::future::join_all;
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions,
};

use super::docker::{engine, ENV_LABEL};
use super::NatsError;

/// Label holding the process id of the process that created the container
/// or network.
pub const OWNER_PID_LABEL: &str = "hs.nats.owner.pid";

/// Label holding when the owning process started (field 22 of
/// `/proc/<pid>/stat`, clock ticks since boot).
pub const OWNER_START_LABEL: &str = "hs.nats.owner.start";

/// Label holding where the owner's pid means something:
/// `<boot id>/pidns:<inode>/uid:<uid>`. Only objects whose scope equals the
/// reaping process's own are ever judged.
pub const OWNER_SCOPE_LABEL: &str = "hs.nats.owner.scope";

/// The process that creates containers and networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
    pub(crate) scope: String,
}

impl Owner {
    /// This process, or `None` where `/proc` cannot tell (then nothing is
    /// labelled with an owner and nothing is reaped).
    pub(crate) fn current() -> Option<&'static Owner> {
        static OWNER: OnceLock<Option<Owner>> = OnceLock::new();
        OWNER
            .get_or_init(|| {
                let pid = std::process::id();
                let owner = match (process_start_ticks(pid), current_scope()) {
                    (Probe::Running(start_ticks), Some(scope)) => Some(Owner { pid, start_ticks, scope }),
                    _ => None,
                };
                if owner.is_none() {
                    tracing::debug!("cannot identify this process through /proc; leftover nats containers will not be reaped");
                }
                owner
            })
            .as_ref()
    }

    /// The owner labels to put on containers and networks.
    pub(crate) fn labels(&self) -> [(&'static str, String); 3] {
        [
            (OWNER_PID_LABEL, self.pid.to_string()),
            (OWNER_START_LABEL, self.start_ticks.to_string()),
            (OWNER_SCOPE_LABEL, self.scope.clone()),
        ]
    }
}

/// The owner labels of this process (empty when it cannot be identified).
pub(crate) fn owner_labels() -> Vec<(&'static str, String)> {
    Owner::current().map(|o| o.labels().to_vec()).unwrap_or_default()
}

/// What `/proc` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A process with this pid exists and started at these clock ticks.
    Running(u64),
    /// No process with this pid exists.
    Absent,
    /// `/proc` could not tell (unreadable, unparsable).
    Unknown,
}

/// The decision about one labelled object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its owner runs: leave it.
    Alive,
    /// Its owner is gone: remove it. The string says how we know.
    Dead(String),
    /// Its owner lives in another scope (machine, pid namespace, user or
    /// boot): cannot be checked, leave it.
    Foreign,
    /// No usable owner labels, or `/proc` could not tell: leave it.
    Unknown,
}

/// Decides whether the owner of an object with `labels` is dead. Pure: the
/// process table is consulted only through `probe`.
pub(crate) fn judge(labels: &HashMap<String, String>, me: &Owner, probe: impl Fn(u32) -> Probe) -> Verdict {
    let pid = labels.get(OWNER_PID_LABEL).and_then(|v| v.parse::<u32>().ok());
    let start = labels.get(OWNER_START_LABEL).and_then(|v| v.parse::<u64>().ok());
    let (Some(pid), Some(start), Some(scope)) = (pid, start, labels.get(OWNER_SCOPE_LABEL)) else {
        return Verdict::Unknown;
    };
    if *scope != me.scope {
        return Verdict::Foreign;
    }
    match probe(pid) {
        Probe::Absent => Verdict::Dead(format!("process {pid} no longer exists")),
        Probe::Running(now) if now != start => {
            Verdict::Dead(format!("process {pid} exited (the pid now belongs to a process started at tick {now}, not {start})"))
        }
        Probe::Running(_) => Verdict::Alive,
        Probe::Unknown => Verdict::Unknown,
    }
}

/// Reads the start time of `pid` from `/proc/<pid>/stat`.
pub(crate) fn process_start_ticks(pid: u32) -> Probe {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Absent,
        // ESRCH: the process went away while being read.
        Err(e) if e.raw_os_error() == Some(3) => return Probe::Absent,
        Err(_) => return Probe::Unknown,
    };
    match parse_start_ticks(&stat) {
        Some(ticks) => Probe::Running(ticks),
        None => Probe::Unknown,
    }
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may contain spaces and parentheses, so
/// counting starts after the last `)`, at field 3.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// `<boot id>/pidns:<inode>/uid:<uid>` of this process.
fn current_scope() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    // `pid:[4026531836]`
    let inode = pid_ns.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.to_owned();
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    Some(format!("{}/pidns:{inode}/uid:{uid}", boot_id.trim()))
}

/// What [`reap_leftovers`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Names of the removed containers.
    pub containers: Vec<String>,
    /// Names of the removed networks.
    pub networks: Vec<String>,
    /// Names of the removed store volumes (left behind by a container
    /// removed without its volumes).
    pub volumes: Vec<String>,
}

impl Reaped {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty()
    }
}

/// Removes the containers, networks and volumes labelled [`ENV_LABEL`] whose owning
/// process (same boot, pid namespace and user as this one) no longer
/// exists, and logs each removal. Everything else is left alone. Returns
/// what was removed; failing to remove one object is logged and skipped.
pub async fn reap_leftovers() -> Result<Reaped, NatsError> {
    let Some(me) = Owner::current() else {
        return Ok(Reaped::default());
    };
    let docker = engine().await?;
    let filters = HashMap::from([("label", vec![ENV_LABEL])]);
    let (containers, networks) = tokio::join!(
        docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build())),
        docker.list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build())),
    );
    let api_error = |context: &str| {
        let context = context.to_owned();
        move |source| NatsError::DockerApi { context, source }
    };
    let containers = containers.map_err(api_error("failed to list nats containers"))?;
    let networks = networks.map_err(api_error("failed to list nats networks"))?;

    let mut reaped = Reaped::default();
    let doomed_containers: Vec<(String, String, String)> = containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let Verdict::Dead(why) = judge(&labels, me, process_start_ticks) else {
                return None;
            };
            let id = c.id?;
            let name =
                c.names.and_then(|n| n.into_iter().next()).map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_else(|| id.clone());
            Some((id, name, why))
        })
        .collect();
    let removals = doomed_containers.iter().map(|(id, name, why)| {
        let docker = &docker;
        async move {
            let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            match docker.remove_container(id, Some(options)).await {
                Ok(()) => {
                    tracing::info!(container = %name, "removed leftover nats container: {why}");
                    Some(name.clone())
                }
                Err(e) if another_reaper_got_there(&e) => {
                    tracing::debug!(container = %name, error = %e, "leftover nats container already being removed");
                    None
                }
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "failed to remove leftover nats container");
                    None
                }
            }
        }
    });
    reaped.containers = join_all(removals).await.into_iter().flatten().collect();

    // Networks last: one still has the removed containers attached until
    // they are gone.
    for network in networks {
        let labels = network.labels.unwrap_or_default();
        let Verdict::Dead(why) = judge(&labels, me, process_start_ticks) else {
            continue;
        };
        let Some(name) = network.name else { continue };
        match docker.remove_network(&name).await {
            Ok(()) => {
                tracing::info!(network = %name, "removed leftover nats network: {why}");
                reaped.networks.push(name);
            }
            Err(e) if another_reaper_got_there(&e) => {
                tracing::debug!(network = %name, error = %e, "leftover nats network already being removed");
            }
            Err(e) => {
                tracing::warn!(network = %name, error = %e, "failed to remove leftover nats network");
            }
        }
    }
    // Volumes after the containers: listed now, those the removals above
    // took with them are gone, and what is left has no container.
    let volumes = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::new().filters(&filters).build()))
        .await
        .map_err(api_error("failed to list nats volumes"))?;
    for volume in volumes.volumes.unwrap_or_default() {
        let Verdict::Dead(why) = judge(&volume.labels, me, process_start_ticks) else {
            continue;
        };
        match docker.remove_volume(&volume.name, None::<RemoveVolumeOptions>).await {
            Ok(()) => {
                tracing::info!(volume = %volume.name, "removed leftover nats volume: {why}");
                reaped.volumes.push(volume.name);
            }
            // 409: still in use, by a container another reaper is removing.
            Err(e) if another_reaper_got_there(&e) => {
                tracing::debug!(volume = %volume.name, error = %e, "leftover nats volume already being removed");
            }
            Err(e) => {
                tracing::warn!(volume = %volume.name, error = %e, "failed to remove leftover nats volume");
            }
        }
    }
    if !reaped.is_empty() {
        tracing::info!(
            containers = reaped.containers.len(),
            networks = reaped.networks.len(),
            volumes = reaped.volumes.len(),
            "removed leftovers of dead nats environments"
        );
    }
    Ok(reaped)
}

/// Whether a removal failed because another process reaping the same
/// leftovers was faster: the object is gone (404) or its removal is in
/// progress (409; for a network also "has active endpoints" while the other
/// process still removes its container).
fn another_reaper_got_there(error: &testcontainers::bollard::errors::Error) -> bool {
    use testcontainers::bollard::errors::Error;
    matches!(error, Error::DockerResponseServerError { status_code: 404 | 409, .. })
        || matches!(
            error,
            Error::DockerResponseServerError { status_code: 403, message }
                if message.contains("active endpoints")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner { pid: 100, start_ticks: 5_000, scope: "boot/pidns:1/uid:0".into() }
    }

    fn labels(pid: &str, start: &str, scope: &str) -> HashMap<String, String> {
        HashMap::from([
            (ENV_LABEL.to_owned(), "abc".to_owned()),
            (OWNER_PID_LABEL.to_owned(), pid.to_owned()),
            (OWNER_START_LABEL.to_owned(), start.to_owned()),
            (OWNER_SCOPE_LABEL.to_owned(), scope.to_owned()),
        ])
    }

    #[test]
    fn owner_gone_is_dead() {
        let l = labels("42", "777", "boot/pidns:1/uid:0");
        assert!(matches!(judge(&l, &me(), |_| Probe::Absent), Verdict::Dead(_)));
    }

    #[test]
    fn reused_pid_is_dead() {
        let l = labels("42", "777", "boot/pidns:1/uid:0");
        assert!(matches!(judge(&l, &me(), |_| Probe::Running(900)), Verdict::Dead(_)));
    }

    #[test]
    fn running_owner_is_alive() {
        let l = labels("42", "777", "boot/pidns:1/uid:0");
        assert_eq!(judge(&l, &me(), |_| Probe::Running(777)), Verdict::Alive);
    }

    #[test]
    fn other_scopes_and_missing_labels_are_left_alone() {
        let absent = |_| Probe::Absent;
        for scope in ["other-boot/pidns:1/uid:0", "boot/pidns:2/uid:0", "boot/pidns:1/uid:1000"] {
            assert_eq!(judge(&labels("42", "777", scope), &me(), absent), Verdict::Foreign);
        }
        let mut partial = labels("42", "777", "boot/pidns:1/uid:0");
        partial.remove(OWNER_START_LABEL);
        assert_eq!(judge(&partial, &me(), absent), Verdict::Unknown);
        let legacy = HashMap::from([(ENV_LABEL.to_owned(), "abc".to_owned())]);
        assert_eq!(judge(&legacy, &me(), absent), Verdict::Unknown);
        assert_eq!(judge(&labels("x", "777", "boot/pidns:1/uid:0"), &me(), absent), Verdict::Unknown);
        assert_eq!(judge(&labels("42", "777", "boot/pidns:1/uid:0"), &me(), |_| { Probe::Unknown }), Verdict::Unknown);
    }

    #[test]
    fn stat_parsing_skips_odd_command_names() {
        let fields_after_comm = (3..=52).map(|i| if i == 22 { "43456".to_owned() } else { i.to_string() }).collect::<Vec<_>>().join(" ");
        for comm in ["cat", "a b) c (d", ")"] {
            let line = format!("14312 ({comm}) {fields_after_comm}\n");
            assert_eq!(parse_start_ticks(&line), Some(43456), "{line}");
        }
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_an_exited_child_is_dead() {
        let Some(me) = Owner::current() else {
            // No /proc: nothing is labelled or reaped.
            return;
        };
        let mine: HashMap<String, String> = me.labels().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(judge(&mine, me, process_start_ticks), Verdict::Alive);

        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let Probe::Running(start) = process_start_ticks(pid) else {
            // It may already have exited (a zombie still has a stat file,
            // so this is rare); the reaped case is covered below anyway.
            child.wait().expect("wait");
            return;
        };
        child.wait().expect("wait");
        let gone = Owner { pid, start_ticks: start, scope: me.scope.clone() };
        let labels: HashMap<String, String> = gone.labels().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert!(matches!(judge(&labels, me, process_start_ticks), Verdict::Dead(_)));
    }
}
