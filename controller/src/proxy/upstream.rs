//! Which address the edge uses for an upstream container, and which network it must join to
//! reach it. Pure: the reconciler gathers the facts from Docker.

use std::fmt;
use std::net::SocketAddr;

use crate::docker::{ContainerFacts, NetworkFacts};

/// A container the edge can reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachable {
    pub container: String,
    pub network: String,
    pub address: SocketAddr,
}

/// Why the edge cannot reach a container, with the condition reason it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound(String),
    NotRunning(String),
    /// `host`, `none` or `container:<id>`: nothing another container can join.
    SharedNetworkMode {
        container: String,
        mode: String,
    },
    NetworkNotEligible {
        network: String,
        why: String,
    },
    NotOnNetwork {
        container: String,
        network: String,
    },
    NoEligibleNetwork(String),
    Ambiguous {
        container: String,
        networks: Vec<String>,
    },
    NoAddress {
        container: String,
        network: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotFound(_) => "UpstreamNotFound",
            Refusal::NotRunning(_) => "UpstreamNotRunning",
            Refusal::SharedNetworkMode { .. } | Refusal::NetworkNotEligible { .. } => {
                "NetworkRefused"
            }
            Refusal::NotOnNetwork { .. } | Refusal::NoEligibleNetwork(_) => "NoEligibleNetwork",
            Refusal::Ambiguous { .. } => "NetworkAmbiguous",
            Refusal::NoAddress { .. } => "UpstreamNoAddress",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFound(what) => write!(f, "no container matches {what}"),
            Refusal::NotRunning(name) => write!(f, "container {name} is not running"),
            Refusal::SharedNetworkMode { container, mode } => write!(
                f,
                "container {container} uses network mode {mode:?}, which the edge cannot join; \
                 put it on a bridge network"
            ),
            Refusal::NetworkNotEligible { network, why } => {
                write!(f, "the edge does not join network {network}: {why}")
            }
            Refusal::NotOnNetwork { container, network } => {
                write!(f, "container {container} is not on network {network}")
            }
            Refusal::NoEligibleNetwork(container) => write!(
                f,
                "container {container} is on no network the edge may join (bridge, macvlan or \
                 ipvlan, local scope)"
            ),
            Refusal::Ambiguous {
                container,
                networks,
            } => write!(
                f,
                "container {container} is on several networks ({}): name one in \
                 spec.upstream.network",
                networks.join(", ")
            ),
            Refusal::NoAddress { container, network } => {
                write!(
                    f,
                    "container {container} has no address on network {network} yet"
                )
            }
        }
    }
}

/// Why a network may not be joined, if it may not.
pub fn ineligible(network: &NetworkFacts) -> Option<String> {
    match network.name.as_str() {
        "host" | "none" => return Some(format!("{:?} is not a network one joins", network.name)),
        _ => {}
    }
    if network.scope != "local" {
        return Some(format!(
            "it is {}-scoped ({} driver): a swarm network would expose the edge cluster-wide",
            network.scope, network.driver
        ));
    }
    if !matches!(network.driver.as_str(), "bridge" | "macvlan" | "ipvlan") {
        return Some(format!(
            "its driver {} is not bridge, macvlan or ipvlan",
            network.driver
        ));
    }
    None
}

/// Where the edge reaches `container` on `port`. `networks` has the facts of every network
/// the container is on; `wanted` is `spec.upstream.network`.
pub fn choose(
    container: &ContainerFacts,
    networks: &[NetworkFacts],
    wanted: Option<&str>,
    port: u16,
) -> Result<Reachable, Refusal> {
    let name = container.name.clone();
    if !container.running {
        return Err(Refusal::NotRunning(name));
    }
    let mode = container.network_mode.as_str();
    if mode == "host" || mode == "none" || mode.starts_with("container:") {
        return Err(Refusal::SharedNetworkMode {
            container: name,
            mode: mode.to_owned(),
        });
    }
    let facts = |network: &str| networks.iter().find(|n| n.name == network);
    let attachment = match wanted {
        Some(network) => {
            let attachment = container
                .networks
                .iter()
                .find(|a| a.network == network)
                .ok_or_else(|| Refusal::NotOnNetwork {
                    container: name.clone(),
                    network: network.to_owned(),
                })?;
            if let Some(why) = facts(network).and_then(ineligible) {
                return Err(Refusal::NetworkNotEligible {
                    network: network.to_owned(),
                    why,
                });
            }
            attachment
        }
        None => {
            let eligible: Vec<_> = container
                .networks
                .iter()
                .filter(|a| facts(&a.network).is_some_and(|n| ineligible(n).is_none()))
                .collect();
            match eligible.as_slice() {
                [] => return Err(Refusal::NoEligibleNetwork(name)),
                [one] => *one,
                many => {
                    return Err(Refusal::Ambiguous {
                        container: name,
                        networks: many.iter().map(|a| a.network.clone()).collect(),
                    });
                }
            }
        }
    };
    let ip = attachment.ip.ok_or_else(|| Refusal::NoAddress {
        container: name.clone(),
        network: attachment.network.clone(),
    })?;
    Ok(Reachable {
        container: name,
        network: attachment.network.clone(),
        address: SocketAddr::new(ip, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Attachment;

    fn network(name: &str, driver: &str, scope: &str) -> NetworkFacts {
        NetworkFacts {
            id: format!("id-{name}"),
            name: name.to_owned(),
            driver: driver.to_owned(),
            scope: scope.to_owned(),
        }
    }

    fn container(mode: &str, networks: &[(&str, Option<&str>)]) -> ContainerFacts {
        ContainerFacts {
            id: "c1".to_owned(),
            name: "shop".to_owned(),
            running: true,
            network_mode: mode.to_owned(),
            labels: Default::default(),
            networks: networks
                .iter()
                .map(|(n, ip)| Attachment {
                    network: (*n).to_owned(),
                    network_id: format!("id-{n}"),
                    ip: ip.map(|ip| ip.parse().unwrap()),
                })
                .collect(),
        }
    }

    fn facts() -> Vec<NetworkFacts> {
        vec![
            network("bridge", "bridge", "local"),
            network("shop", "bridge", "local"),
            network("db", "bridge", "local"),
            network("mesh", "overlay", "swarm"),
            network("host", "host", "local"),
        ]
    }

    #[test]
    fn the_only_eligible_network_is_chosen() {
        let c = container(
            "shop",
            &[("shop", Some("172.20.0.3")), ("mesh", Some("10.0.0.3"))],
        );
        let reachable = choose(&c, &facts(), None, 8080).unwrap();
        assert_eq!(reachable.network, "shop");
        assert_eq!(reachable.address, "172.20.0.3:8080".parse().unwrap());
    }

    #[test]
    fn several_eligible_networks_need_a_choice() {
        let c = container(
            "shop",
            &[("shop", Some("172.20.0.3")), ("db", Some("172.21.0.3"))],
        );
        let refusal = choose(&c, &facts(), None, 80).unwrap_err();
        assert_eq!(refusal.reason(), "NetworkAmbiguous");
        assert!(refusal.to_string().contains("shop, db"), "{refusal}");
        assert_eq!(choose(&c, &facts(), Some("db"), 80).unwrap().network, "db");
    }

    #[test]
    fn shared_network_modes_and_swarm_networks_are_refused() {
        for mode in ["host", "none", "container:abc"] {
            let refusal = choose(&container(mode, &[]), &facts(), None, 80).unwrap_err();
            assert_eq!(refusal.reason(), "NetworkRefused", "{mode}");
        }
        let c = container("mesh", &[("mesh", Some("10.0.0.3"))]);
        assert_eq!(
            choose(&c, &facts(), None, 80).unwrap_err().reason(),
            "NoEligibleNetwork"
        );
        let refusal = choose(&c, &facts(), Some("mesh"), 80).unwrap_err();
        assert_eq!(refusal.reason(), "NetworkRefused");
        assert!(refusal.to_string().contains("swarm-scoped"), "{refusal}");
    }

    #[test]
    fn a_stopped_container_or_a_missing_address_is_reported() {
        let mut c = container("bridge", &[("bridge", None)]);
        assert_eq!(
            choose(&c, &facts(), None, 80).unwrap_err().reason(),
            "UpstreamNoAddress"
        );
        c.running = false;
        assert_eq!(
            choose(&c, &facts(), None, 80).unwrap_err().reason(),
            "UpstreamNotRunning"
        );
        let c = container("bridge", &[("bridge", Some("172.17.0.2"))]);
        assert_eq!(
            choose(&c, &facts(), Some("shop"), 80).unwrap_err().reason(),
            "NoEligibleNetwork"
        );
    }
}
