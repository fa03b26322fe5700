//! Load generator for `bench/kafka.py`: produces events at a steady rate and reports, for every
//! `--sample-every`th record, when it was handed to the client and when the broker acknowledged
//! it. Written in Rust so that the harness takes little of the cores the broker and the worker
//! are measured on (4 % of a core at 20,000 events/s, where a Python producer loop took 7 %).
//!
//! ```sh
//! cargo run --release -p floe-ingest --example kafka_load -- \
//!     --clusters "127.0.0.1:19092" --tenants a,b,c,d --rate 20000 --seconds 60 > samples.tsv
//! ```
//!
//! Tenant `k` (in `--tenants` order) is produced to `tenant-{k}.events` on cluster
//! `k % clusters`; records go round-robin over the tenants. stdout gets one line per sampled
//! record, `tenant partition offset sent_unix_ns acked_unix_ns`; the last stderr line is a JSON
//! summary (`produced`, `seconds`, `per_s`, `failed`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// The wall clock as of the start, advanced by a monotonic clock: one time base for the whole
/// run that the Python prober (`time.time()`) can compare with.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix_ns: u64,
}

impl Clock {
    fn new() -> Self {
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64;
        Self {
            start: Instant::now(),
            start_unix_ns,
        }
    }

    fn now_ns(&self) -> u64 {
        self.start_unix_ns + self.start.elapsed().as_nanos() as u64
    }
}

struct Samples {
    clock: Clock,
    lines: Mutex<Vec<String>>,
    failed: AtomicU64,
}

impl ClientContext for Samples {}

impl ProducerContext for Samples {
    /// The send time of a sampled record, 0 for the others.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(msg) => {
                if sent_ns != 0 {
                    let acked = self.clock.now_ns();
                    let tenant = msg
                        .topic()
                        .trim_start_matches("tenant-")
                        .trim_end_matches(".events");
                    let line = format!(
                        "{tenant}\t{}\t{}\t{sent_ns}\t{acked}",
                        msg.partition(),
                        msg.offset()
                    );
                    self.lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                }
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("kafka_load: a record was not delivered: {e}");
                }
            }
        }
    }
}

struct Args {
    clusters: Vec<String>,
    tenants: Vec<String>,
    rate: u64,
    seconds: u64,
    sample_every: u64,
    linger_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        clusters: vec!["127.0.0.1:19092".into()],
        tenants: Vec::new(),
        rate: 20_000,
        seconds: 60,
        sample_every: 100,
        linger_ms: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--clusters" => args.clusters = value.split(';').map(str::to_string).collect(),
            "--tenants" => args.tenants = value.split(',').map(str::to_string).collect(),
            "--rate" => args.rate = number()?,
            "--seconds" => args.seconds = number()?,
            "--sample-every" => args.sample_every = number()?.max(1),
            "--linger-ms" => args.linger_ms = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.tenants.is_empty() {
        return Err("--tenants a,b,... is required".into());
    }
    if args.rate == 0 {
        return Err("--rate must be above 0".into());
    }
    Ok(args)
}

fn event(tenant: &str, i: u64, rng: &mut rand::rngs::StdRng) -> String {
    const TYPES: [&str; 3] = ["page_view", "purchase", "signup"];
    format!(
        r#"{{"event_id":"{tenant}-{i}","type":"{}","timestamp":{},"user_id":"u{}","payload":{{"page":"/p/{}","amount":{}}}}}"#,
        TYPES[rng.random_range(0..3)],
        1_764_000_000 + i / 100,
        rng.random_range(0..10_000),
        rng.random_range(0..500),
        rng.random_range(0..10_000) as f64 / 100.0,
    )
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kafka_load: {e}");
            std::process::exit(2);
        }
    };
    let clock = Clock::new();
    // The same security settings as Floe's own clients: `kafka.properties` of ./floe.toml and
    // FLOE_KAFKA_PROPERTIES_* (TLS and SASL for the test stack's broker).
    let config = floe_catalog::Config::load(None, std::env::vars(), &[]).unwrap_or_else(|e| {
        eprintln!("kafka_load: {e}");
        std::process::exit(2);
    });
    let producers: Vec<ThreadedProducer<Samples>> = args
        .clusters
        .iter()
        .map(|brokers| {
            floe_ingest::kafka::client_config(&config, &[])
                .set("bootstrap.servers", brokers)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", args.linger_ms.to_string())
                .create_with_context(Samples {
                    clock,
                    lines: Mutex::new(Vec::new()),
                    failed: AtomicU64::new(0),
                })
                .unwrap_or_else(|e| panic!("producer for {brokers}: {e}"))
        })
        .collect();
    let topics: Vec<String> = args
        .tenants
        .iter()
        .map(|t| format!("tenant-{t}.events"))
        .collect();
    let total = args.rate * args.seconds;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let start = Instant::now();
    for i in 0..total {
        let k = (i % topics.len() as u64) as usize;
        let producer = &producers[k % producers.len()];
        let payload = event(&args.tenants[k], i, &mut rng);
        let sent = if i % args.sample_every == 0 {
            clock.now_ns() as usize
        } else {
            0
        };
        let mut record: BaseRecord<(), String, usize> =
            BaseRecord::with_opaque_to(&topics[k], sent).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The client's queue is full: the broker is behind; wait for deliveries.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("producing to {}: {e}", topics[k]),
            }
        }
        if i % 1000 == 999 {
            let due = Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    for producer in &producers {
        producer
            .flush(Duration::from_secs(120))
            .expect("every record acknowledged within 120 s");
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut out = String::new();
    let mut failed = 0;
    for producer in &producers {
        let samples = producer.context();
        failed += samples.failed.load(Ordering::Relaxed);
        for line in samples
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    print!("{out}");
    eprintln!(
        r#"{{"produced":{total},"seconds":{seconds:.3},"per_s":{},"failed":{}}}"#,
        (total as f64 / seconds).round(),
        failed
    );
}
