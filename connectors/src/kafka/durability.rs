//! What the event topics promise about a record the mirror has had
//! acknowledged (`acks=all`): how many copies it has, how many must hold it
//! before the broker says yes, and whether a replica that missed it may
//! become the leader. The mirror acknowledges a Redis entry once Kafka has
//! its record, and Redis then trims it: from there the topic holds the only
//! copy, so this decides what survives a broker's loss (docs/OPERATIONS.md,
//! "Kafka durability"). `serve` reads it at startup and every minute, like
//! Redis's persistence, into `inkstream_kafka_durability_info` and a warning.

use super::{Brokers, KafkaError, client_config};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;

/// The weakest of the event topics, as the brokers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDurability {
    /// The fewest replicas of any partition.
    pub replicas: usize,
    /// The lowest `min.insync.replicas`.
    pub min_insync: i32,
    /// Whether any topic has `unclean.leader.election.enable = true`.
    pub unclean_leader_election: bool,
}

impl TopicDurability {
    /// What an acknowledged record may be lost to, when it is weak; `None`
    /// for at least two copies that must both have it, and no unclean
    /// leader.
    pub fn weakness(&self) -> Option<String> {
        if self.replicas <= 1 {
            return Some(
                "THE EVENT TOPICS KEEP ONE COPY of each record: losing that broker's disk loses \
                 every acknowledged event the log has since trimmed; create them with \
                 kafka.replication_factor >= 3 (or the brokers' default.replication.factor) and \
                 min.insync.replicas = 2"
                    .to_owned(),
            );
        }
        if self.min_insync < 2 {
            return Some(format!(
                "THE EVENT TOPICS ACCEPT A RECORD ON ONE COPY (min.insync.replicas = {}, {} \
                 replicas): with its followers behind, acks=all is met by the leader alone, and \
                 losing it loses what it acknowledged; set min.insync.replicas = 2 on the topics \
                 or the brokers",
                self.min_insync, self.replicas
            ));
        }
        if self.unclean_leader_election {
            return Some(
                "AN EVENT TOPIC ALLOWS UNCLEAN LEADER ELECTION: a replica that missed \
                 acknowledged records may become the leader and drop them; set \
                 unclean.leader.election.enable = false"
                    .to_owned(),
            );
        }
        None
    }
}

/// Reads the durability of `topics` (each must exist).
pub async fn read(brokers: &Brokers, topics: &[String]) -> Result<TopicDurability, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let specs: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let mut min_insync = i32::MAX;
    let mut unclean_leader_election = false;
    for result in admin.describe_configs(&specs, &opts).await? {
        let resource = result.map_err(|code| KafkaError::Describe(code.to_string()))?;
        let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
        let insync = value("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        min_insync = min_insync.min(insync);
        unclean_leader_election |=
            value("unclean.leader.election.enable").as_deref() == Some("true");
    }
    let topics = topics.to_vec();
    let replicas = tokio::task::spawn_blocking(move || -> Result<usize, KafkaError> {
        let mut fewest = usize::MAX;
        for topic in &topics {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let copies = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| p.replicas().len())
                .min()
                .filter(|n| *n > 0)
                // Just created: its partitions have no replicas assigned yet.
                .ok_or_else(|| KafkaError::Describe(format!("{topic} has no replicas yet")))?;
            fewest = fewest.min(copies);
        }
        Ok(fewest)
    })
    .await
    .map_err(|e| KafkaError::Blocking(e.to_string()))??;
    Ok(TopicDurability {
        replicas,
        min_insync: if min_insync == i32::MAX {
            1
        } else {
            min_insync
        },
        unclean_leader_election,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(replicas: usize, min_insync: i32, unclean: bool) -> Option<String> {
        TopicDurability {
            replicas,
            min_insync,
            unclean_leader_election: unclean,
        }
        .weakness()
    }

    #[test]
    fn two_copies_that_must_both_hold_a_record_and_no_unclean_leader_are_durable() {
        assert_eq!(d(3, 2, false), None);
        assert_eq!(d(2, 2, false), None);
        assert!(d(1, 1, false).unwrap().contains("ONE COPY"));
        assert!(
            d(3, 1, false)
                .unwrap()
                .contains("min.insync.replicas = 1, 3 replicas")
        );
        assert!(d(3, 2, true).unwrap().contains("UNCLEAN LEADER ELECTION"));
    }
}
