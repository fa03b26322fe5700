//! The load generator of `floe gen`: synthetic events of the four demo types sent to a running Floe, measuring
//! accepted events per second and time-to-visible.
//!
//! Time-to-visible is sampled by a probe that, beside the load, sends small batches with
//! `?wait=visible` and times each from send to reply: the reply comes only once the batch (and
//! everything acknowledged before it) is queryable.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use anyhow::{Context, Result, anyhow};

/// Body framing of the generated requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Gzip,
    /// Rotate through the three.
    Mixed,
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// (tenant, ingest token) pairs; each tenant gets `events` events.
    pub tenants: Vec<(String, String)>,
    pub events: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// Fraction of events re-sent later with the same `event_id`.
    pub duplicate_ratio: f64,
    pub format: Format,
    pub seed: u64,
    /// Run the time-to-visible probe.
    pub probe: bool,
    /// Event times fall within this many seconds before the start (late and out of order).
    pub ts_spread_secs: i64,
    /// Events per second to send at most (over all workers); `None`: as fast as the server
    /// takes them.
    pub rate: Option<f64>,
    /// Counts the events sent so far (for a progress bar).
    pub sent: Arc<AtomicU64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TenantCounts {
    /// Distinct events sent per type.
    pub by_type: BTreeMap<String, u64>,
    pub distinct: u64,
    pub sent_with_duplicates: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenReport {
    pub requests: usize,
    pub events_sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub visible_p50_ms: Option<f64>,
    pub visible_p99_ms: Option<f64>,
    pub visible_samples: u64,
    pub tenants: BTreeMap<String, TenantCounts>,
}

const TYPES: [&str; 4] = [
    "PageViewed",
    "PurchaseMade",
    "SensorReading",
    "AlertTriggered",
];
const PAGES: [&str; 8] = [
    "/",
    "/home",
    "/pricing",
    "/docs",
    "/blog",
    "/cart",
    "/checkout",
    "/login",
];
const REFS: [&str; 4] = ["newsletter", "search", "direct", "ad"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
const SEVERITIES: [&str; 3] = ["low", "high", "critical"];

/// One synthetic event; `form` picks the timestamp form (seconds, milliseconds, RFC 3339).
pub fn make_event(
    rng: &mut StdRng,
    tenant: &str,
    (now_s, spread_s): (i64, i64),
    form: usize,
) -> Value {
    let kind = TYPES[rng.random_range(0..TYPES.len())];
    // Out of order and late: up to `spread_s` back.
    let ts_ms = (now_s - rng.random_range(0..spread_s.max(1))) * 1000 + rng.random_range(0..1000);
    let timestamp = match form % 3 {
        0 => json!(ts_ms / 1000),
        1 => json!(ts_ms),
        _ => json!(
            chrono::DateTime::from_timestamp_millis(ts_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
    };
    let user = format!("u-{}", rng.random_range(0..5_000));
    let payload = match kind {
        "PageViewed" => {
            json!({"page": PAGES[rng.random_range(0..PAGES.len())], "ref": REFS[rng.random_range(0..REFS.len())]})
        }
        "PurchaseMade" => json!({
            "order_id": format!("o-{}", rng.random::<u32>()),
            "amount": (rng.random_range(100..50_000) as f64) / 100.0,
            "currency": CURRENCIES[rng.random_range(0..CURRENCIES.len())],
        }),
        "SensorReading" => {
            json!({"sensor_id": format!("s-{}", rng.random_range(0..200)), "value": rng.random_range(-40.0..60.0)})
        }
        _ => {
            json!({"alert": format!("alert-{}", rng.random_range(0..20)), "severity": SEVERITIES[rng.random_range(0..SEVERITIES.len())]})
        }
    };
    json!({
        "event_id": uuid::Uuid::from_u128(rng.random::<u128>()).to_string(),
        "tenant_id": tenant,
        "type": kind,
        "version": 1,
        "timestamp": timestamp,
        "user_id": user,
        "payload": payload,
    })
}

/// A request encoded ahead of time.
struct Request {
    tenant: usize,
    events: usize,
    body: bytes::Bytes,
    content_type: &'static str,
    gzip: bool,
}

fn encode(events: &[Value], format: Format) -> Result<(Vec<u8>, &'static str, bool)> {
    Ok(match format {
        Format::Json | Format::Mixed => (serde_json::to_vec(events)?, "application/json", false),
        Format::Ndjson | Format::Gzip => {
            let mut body = Vec::new();
            for e in events {
                serde_json::to_writer(&mut body, e)?;
                body.push(b'\n');
            }
            if format == Format::Gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&body)?;
                (gz.finish()?, "application/x-ndjson", true)
            } else {
                (body, "application/x-ndjson", false)
            }
        }
    })
}

/// Builds every request up front (so the measurement is of the server, not the generator).
fn plan(opts: &GenOptions) -> Result<(Vec<Request>, BTreeMap<String, TenantCounts>)> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let now_s = chrono::Utc::now().timestamp();
    let mut counts = BTreeMap::new();
    let mut requests = Vec::new();
    let formats = [Format::Json, Format::Ndjson, Format::Gzip];
    let mut n_req = 0usize;
    for (ti, (tenant, _)) in opts.tenants.iter().enumerate() {
        let mut c = TenantCounts::default();
        let mut all: Vec<Value> = Vec::with_capacity(opts.events);
        for i in 0..opts.events {
            let e = make_event(&mut rng, tenant, (now_s, opts.ts_spread_secs), i);
            *c.by_type
                .entry(e["type"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
            all.push(e);
        }
        c.distinct = all.len() as u64;
        // Duplicates: re-send copies of random earlier events, mixed into later batches.
        let dups = (opts.events as f64 * opts.duplicate_ratio).round() as usize;
        let mut stream: Vec<Value> = all;
        for _ in 0..dups {
            if stream.is_empty() {
                break;
            }
            let src = rng.random_range(0..stream.len());
            let copy = stream[src].clone();
            let at = rng.random_range(src..=stream.len());
            stream.insert(at, copy);
        }
        c.sent_with_duplicates = stream.len() as u64;
        for chunk in stream.chunks(opts.batch.max(1)) {
            let format = match opts.format {
                Format::Mixed => formats[n_req % 3],
                f => f,
            };
            n_req += 1;
            let (body, content_type, gzip) = encode(chunk, format)?;
            requests.push(Request {
                tenant: ti,
                events: chunk.len(),
                body: body.into(),
                content_type,
                gzip,
            });
        }
        counts.insert(tenant.clone(), c);
    }
    Ok((requests, counts))
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    (body, ct, gz): (bytes::Bytes, &str, bool),
    wait_visible: bool,
) -> Result<Value> {
    let mut req = client
        .post(if wait_visible {
            format!("{url}/v1/events?wait=visible")
        } else {
            format!("{url}/v1/events")
        })
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body);
    if gz {
        req = req.header("content-encoding", "gzip");
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        let resp = req
            .try_clone()
            .ok_or_else(|| anyhow!("request cannot be retried"))?
            .send()
            .await
            .with_context(|| format!("sending to {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 503 {
            // Backpressure: the same batch is retried (the server de-duplicates it).
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        if !status.is_success() {
            return Err(anyhow!("{url} answered {status}: {body}"));
        }
        return Ok(body);
    }
}

/// Sends the planned load and reports.
pub async fn run(opts: GenOptions) -> Result<GenReport> {
    let (requests, tenants) = plan(&opts)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency.max(1) * 2)
        .build()?;
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));

    // The probes: one loop per tenant (at least two), each sending small batches with
    // ?wait=visible and timing them end to end.
    let mut probes = Vec::new();
    if opts.probe {
        for p in 0..opts.tenants.len().max(2) {
            let client = client.clone();
            let (tenant, token) = opts.tenants[p % opts.tenants.len()].clone();
            let (url, seed) = (opts.url.clone(), opts.seed ^ (0xabcdef + p as u64));
            let spread = opts.ts_spread_secs;
            let done = done.clone();
            probes.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut samples: Vec<f64> = Vec::new();
                let mut accepted = 0u64;
                let mut counts = TenantCounts::default();
                while !done.load(Ordering::SeqCst) {
                    let now_s = chrono::Utc::now().timestamp();
                    let events: Vec<Value> = (0..10)
                        .map(|k| make_event(&mut rng, &tenant, (now_s, spread), k))
                        .collect();
                    let Ok(encoded) = encode(&events, Format::Json) else {
                        break;
                    };
                    let started = Instant::now();
                    let (body, ct, gz) = encoded;
                    if let Ok(body) = send(&client, &url, &token, (body.into(), ct, gz), true).await
                    {
                        samples.push(started.elapsed().as_secs_f64() * 1000.0);
                        accepted += body["accepted"].as_u64().unwrap_or(0);
                        for e in &events {
                            *counts
                                .by_type
                                .entry(e["type"].as_str().unwrap_or_default().to_string())
                                .or_default() += 1;
                        }
                        counts.distinct += events.len() as u64;
                        counts.sent_with_duplicates += events.len() as u64;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (samples, accepted, tenant, counts)
            }));
        }
    }

    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, requests, next) = (client.clone(), requests.clone(), next.clone());
        let (accepted, duplicates, rejected) =
            (accepted.clone(), duplicates.clone(), rejected.clone());
        let opts = opts.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(r) = requests.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
                    // Request i leaves when the events before it are due.
                    let due =
                        started + Duration::from_secs_f64((i * opts.batch.max(1)) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let token = &opts.tenants[r.tenant].1;
                let body = send(
                    &client,
                    &opts.url,
                    token,
                    (r.body.clone(), r.content_type, r.gzip),
                    false,
                )
                .await?;
                opts.sent.fetch_add(r.events as u64, Ordering::Relaxed);
                accepted.fetch_add(
                    body["accepted"].as_u64().unwrap_or(0) as usize,
                    Ordering::Relaxed,
                );
                duplicates.fetch_add(
                    body["duplicates"].as_u64().unwrap_or(0) as usize,
                    Ordering::Relaxed,
                );
                rejected.fetch_add(
                    body["rejected"].as_array().map_or(0, |a| a.len()),
                    Ordering::Relaxed,
                );
            }
        }));
    }
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(anyhow!("a sender failed: {e}"))),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let mut tenants = tenants;
    let mut samples = Vec::new();
    let mut probe_accepted = 0;
    for p in probes {
        if let Ok((s, a, tenant, c)) = p.await {
            samples.extend(s);
            probe_accepted += a;
            let e = tenants.entry(tenant).or_default();
            for (k, v) in c.by_type {
                *e.by_type.entry(k).or_default() += v;
            }
            e.distinct += c.distinct;
            e.sent_with_duplicates += c.sent_with_duplicates;
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> Option<f64> {
        (!samples.is_empty()).then(|| samples[((samples.len() - 1) as f64 * p).round() as usize])
    };
    let events_sent: u64 = requests.iter().map(|r| r.events as u64).sum();
    let load_accepted = accepted.load(Ordering::SeqCst) as u64;
    Ok(GenReport {
        requests: requests.len(),
        events_sent,
        accepted: load_accepted + probe_accepted,
        duplicates: duplicates.load(Ordering::SeqCst) as u64,
        rejected: rejected.load(Ordering::SeqCst) as u64,
        seconds,
        events_per_sec: load_accepted as f64 / seconds.max(1e-9),
        visible_p50_ms: pct(0.50),
        visible_p99_ms: pct(0.99),
        visible_samples: samples.len() as u64,
        tenants,
    })
}
