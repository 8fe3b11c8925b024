//! Picking free loopback ports.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports handed out recently by this process, so that two environments
/// started concurrently do not get the same port between the moment it is
/// picked and the moment a server binds it.
static RECENT: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());
const RECENT_CAPACITY: usize = 256;

/// Returns `count` distinct ports that were free on 127.0.0.1 a moment ago.
///
/// The ports are released before returning, so a server started right after
/// will normally get them; callers must still cope with a lost race (another
/// process binding the port first) by retrying with new ports.
pub(crate) fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(count);
    // Bounded: the kernel hands out different ports while earlier listeners
    // are still held, so only recently used ports are skipped.
    for _ in 0..count + RECENT_CAPACITY {
        if ports.len() == count {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if !recent.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    if ports.len() < count {
        return Err(std::io::Error::other("could not find enough free ports"));
    }
    for &port in &ports {
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(port);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_not_reissued() {
        let a = free_ports(6).unwrap();
        let b = free_ports(6).unwrap();
        let mut all: Vec<u16> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 12);
    }
}
