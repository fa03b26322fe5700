//! The librdkafka settings shared by Floe's consumers and producers, and how librdkafka's
//! errors become Floe's.

use floe_catalog::Config;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::Error;

/// The librdkafka settings shared by Floe's consumers and producers: the brokers, then the
/// user's `kafka.properties` over Floe's defaults.
pub fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// A librdkafka error while doing `context`. Settings librdkafka refuses are the caller's to
/// fix; anything else (brokers unreachable, timeouts) may pass with a retry.
pub(crate) fn kafka_err(context: &'static str) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error::Kafka { context, source }
}
