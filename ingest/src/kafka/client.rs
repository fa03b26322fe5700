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

#[cfg(test)]
mod tests {
    use super::*;

    /// `security.protocol=SSL|SASL_SSL` and SCRAM are built in, not just accepted by the config:
    /// librdkafka without them refuses the settings when a client is made.
    #[test]
    fn librdkafka_is_built_with_tls_and_scram() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        let features: Vec<&str> = features.split(',').collect();
        for wanted in ["ssl", "sasl_scram", "sasl_plain"] {
            assert!(
                features.contains(&wanted),
                "librdkafka lacks {wanted}: {features:?}"
            );
        }
        let mut config = Config::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ] {
            config.kafka.properties.insert(k.into(), v.into());
        }
        let c = client_config(&config, &[]);
        c.create::<rdkafka::producer::BaseProducer>()
            .expect("a SASL_SSL producer can be made");
    }
}
