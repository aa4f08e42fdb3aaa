//! Topic creation. Brokers often run with auto-creation off, and an auto-created topic would get
//! the broker's default partition count rather than the one keys were partitioned for.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaError, Result, Settings};

/// Creates every topic of `settings` that does not exist yet; returns the names it created.
/// An existing topic keyed by user (`user-events`, `transaction-stream`, the changelog) must have
/// `events.num_partitions` partitions: the node's log, the changelog and ownership all map a user
/// to `murmur2(user) % events.num_partitions`, so another count is refused.
pub async fn ensure_topics(settings: &Settings, timeout: Duration) -> Result<Vec<String>> {
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(settings.client_config().create()?);
    let existing = {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| KafkaError::Other(e.to_string()))??
    };
    let keyed_by_user = [
        settings.topic(crate::Topic::UserEvents),
        settings.topic(crate::Topic::Transactions),
        settings.changelog_topic(),
    ];
    for topic in existing.topics() {
        let count = topic.partitions().len() as i32;
        if keyed_by_user.iter().any(|n| n == topic.name()) && count != settings.partitions {
            return Err(KafkaError::Other(format!(
                "topic {} has {count} partitions, but events.num_partitions is {}",
                topic.name(),
                settings.partitions
            )));
        }
    }
    let existing: Vec<&str> = existing.topics().iter().map(|t| t.name()).collect();
    let names: Vec<String> = settings
        .all_topics()
        .into_iter()
        .filter(|name| !existing.contains(&name.as_str()))
        .collect();
    if names.is_empty() {
        return Ok(names);
    }
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions_of(name),
                TopicReplication::Fixed(settings.replication),
            );
            // Only each node's latest status, each user's latest session state and each
            // (partition, item)'s latest weight matter: a compacting broker keeps just those.
            let compacted = [
                settings.status_topic(),
                settings.changelog_topic(),
                settings.popularity_topic(),
            ];
            if compacted.contains(name) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let mut created = Vec::new();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(name) => created.push(name),
            // Another node created it between our metadata read and now.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Other(format!("creating topic {name}: {code}")));
            }
        }
    }
    tracing::info!(topics = ?created, partitions = settings.partitions, "created Kafka topics");
    Ok(created)
}
