//! Which agents have open sessions, from the gateways' `AgentSessions`: an
//! agent is connected while any gateway reports a session of theirs, and a
//! gateway not heard from for three of its full reports is taken to be
//! gone, with its sessions.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use natter_core::{TenantId, UserId};
use natter_proto::bus::v1::AgentSessions;
use natter_proto::convert::live_user_from_wire;
use tokio::time::Instant;

/// How long a gateway's report holds without a new one.
pub(crate) const GATEWAY_TTL: Duration =
    Duration::from_secs(3 * natter_contract::ATTACH_EVERY.as_secs());

pub(crate) type AgentKey = (TenantId, UserId);

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    gateways: HashMap<String, Gateway>,
}

#[derive(Debug)]
struct Gateway {
    agents: HashSet<AgentKey>,
    heard: Instant,
}

impl Sessions {
    /// Applies a gateway's report; returns the agents whose connected
    /// state may have changed.
    pub(crate) fn apply(&mut self, report: &AgentSessions, now: Instant) -> Vec<AgentKey> {
        let parse = |users: &[natter_proto::bus::v1::LiveUser]| -> HashSet<AgentKey> {
            users
                .iter()
                .filter_map(|u| live_user_from_wire(u).ok())
                .collect()
        };
        let (online, offline) = (parse(&report.online), parse(&report.offline));
        let gateway = self
            .gateways
            .entry(report.gateway.clone())
            .or_insert_with(|| Gateway {
                agents: HashSet::new(),
                heard: now,
            });
        gateway.heard = now;
        let mut touched: Vec<AgentKey> = online.iter().chain(&offline).cloned().collect();
        if report.full {
            touched.extend(gateway.agents.difference(&online).cloned());
            gateway.agents.clone_from(&online);
        } else {
            gateway.agents.extend(online);
            gateway.agents.retain(|a| !offline.contains(a));
        }
        touched
    }

    /// Forgets the gateways not heard from in [`GATEWAY_TTL`]; returns
    /// their agents.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<AgentKey> {
        let mut gone = Vec::new();
        self.gateways.retain(|_, g| {
            let alive = now.duration_since(g.heard) < GATEWAY_TTL;
            if !alive {
                gone.extend(g.agents.drain());
            }
            alive
        });
        gone
    }

    pub(crate) fn connected(&self, tenant: &TenantId, user: &UserId) -> bool {
        let key = (tenant.clone(), user.clone());
        self.gateways.values().any(|g| g.agents.contains(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::convert::live_user;

    fn report(gateway: &str, online: &[&str], offline: &[&str], full: bool) -> AgentSessions {
        let tenant = TenantId::new("acme").unwrap();
        let users = |names: &[&str]| {
            names
                .iter()
                .map(|n| live_user(&tenant, &UserId::new(*n).unwrap()))
                .collect()
        };
        AgentSessions {
            gateway: gateway.into(),
            online: users(online),
            offline: users(offline),
            full,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_is_connected_while_any_gateway_says_so() {
        let (tenant, ann) = (TenantId::new("acme").unwrap(), UserId::new("ann").unwrap());
        let mut sessions = Sessions::default();
        let now = Instant::now();
        sessions.apply(&report("g1", &["ann"], &[], false), now);
        sessions.apply(&report("g2", &["ann"], &[], false), now);
        sessions.apply(&report("g1", &[], &["ann"], false), now);
        assert!(sessions.connected(&tenant, &ann));
        // A full report without her is her last session there closing.
        let touched = sessions.apply(&report("g2", &[], &[], true), now);
        assert_eq!(touched, vec![(tenant.clone(), ann.clone())]);
        assert!(!sessions.connected(&tenant, &ann));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_gateway_takes_its_sessions_with_it() {
        let (tenant, ann) = (TenantId::new("acme").unwrap(), UserId::new("ann").unwrap());
        let mut sessions = Sessions::default();
        let start = Instant::now();
        sessions.apply(&report("g1", &["ann"], &[], true), start);
        assert!(sessions.expire(start + GATEWAY_TTL / 2).is_empty());
        assert_eq!(
            sessions.expire(start + GATEWAY_TTL),
            vec![(tenant.clone(), ann.clone())]
        );
        assert!(!sessions.connected(&tenant, &ann));
    }
}
