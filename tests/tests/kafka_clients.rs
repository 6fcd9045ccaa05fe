//! Standard Kafka clients against inkstream's topics on Apache Kafka:
//! Debian's `kcat` reads the event and derived topics (keys, headers, values
//! in the Confluent wire format: magic byte 0, the 4-byte schema id, Avro),
//! and Apache Kafka's own consumer-groups tool shows the dataflow's group with
//! its offsets and lag.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{
    PrivateKafka, Server, kafka_tool, kcat, keystrokes, now_ms, post_events, redis_url, unique,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const CONSUMER_GROUPS: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";

/// One record as kcat printed it.
#[derive(Debug)]
struct Record {
    partition: i32,
    key: String,
    headers: HashMap<String, String>,
    value: Vec<u8>,
}

/// Reads `topic` from the beginning to its end with kcat; every record as
/// `partition \t key \t headers \t value-length \n value-bytes`. An error
/// (the topic not created yet) is kcat's message.
fn kcat_read(brokers: &str, topic: &str) -> Result<Vec<Record>, String> {
    let out = std::process::Command::new(kcat())
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%p\\t%k\\t%h\\t%S\\n%s"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut records = Vec::new();
    let mut rest = &out.stdout[..];
    while !rest.is_empty() {
        let nl = rest.iter().position(|b| *b == b'\n').unwrap();
        let line = std::str::from_utf8(&rest[..nl]).unwrap();
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "kcat line {line:?}");
        let len: usize = fields[3].parse().unwrap();
        let headers = fields[2]
            .split(',')
            .filter_map(|h| h.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        records.push(Record {
            partition: fields[0].parse().unwrap(),
            key: fields[1].to_owned(),
            headers,
            value: rest[nl + 1..nl + 1 + len].to_vec(),
        });
        rest = &rest[nl + 1 + len..];
    }
    Ok(records)
}

/// kcat's reads of `topic` until `n` records that `keep` are there.
async fn kcat_until(
    brokers: &str,
    topic: &str,
    n: usize,
    keep: impl Fn(&Record) -> bool,
) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, t) = (brokers.to_owned(), topic.to_owned());
        let read = tokio::task::spawn_blocking(move || kcat_read(&b, &t))
            .await
            .unwrap();
        let outcome = match read {
            Ok(mut records) => {
                records.retain(&keep);
                if records.len() >= n {
                    return records;
                }
                format!("{} records", records.len())
            }
            Err(error) => format!("kcat failed: {error}"),
        };
        assert!(
            Instant::now() < deadline,
            "kcat did not read {n} of the records on {topic} within 60 s: {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Confluent framing, checked byte by byte, then the Avro body decoded.
fn framed(r: &Record) -> schemas::Event {
    let id = schemas::confluent::schema_id();
    assert_eq!(r.value[0], 0, "magic byte");
    assert_eq!(r.value[1..5], id.to_be_bytes(), "schema id, big-endian");
    assert_eq!(r.headers["schema_id"], id.to_string());
    let event = schemas::confluent::decode(&r.value).unwrap();
    assert_eq!(r.headers["event_id"], event.id);
    assert_eq!(r.headers["event_type"], event.event_type());
    assert_eq!(r.key, event.partition_key());
    event
}

/// `kafka-consumer-groups --describe` of `group`: (topic, partition) →
/// (current offset, log-end offset, lag) for the rows with a committed offset.
fn describe(brokers: &str, group: &str) -> Offsets {
    described(brokers, group).0
}

/// (topic, partition) → (committed, log end, lag).
type Offsets = HashMap<(String, i32), (i64, i64, i64)>;

/// [`describe`], and the `CLIENT-ID`s of the group's members.
fn described(brokers: &str, group: &str) -> (Offsets, HashSet<String>) {
    let out = kafka_tool(
        CONSUMER_GROUPS,
        &[
            "--bootstrap-server",
            brokers,
            "--describe",
            "--group",
            group,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-consumer-groups --describe {group}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = HashMap::new();
    let mut clients = HashSet::new();
    let mut columns: Vec<&str> = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"GROUP") {
            columns = cells;
            continue;
        }
        let col = |name: &str| columns.iter().position(|c| *c == name);
        if let Some(client) = col("CLIENT-ID").and_then(|c| cells.get(c))
            && cells.first() == Some(&group)
            && *client != "-"
        {
            clients.insert((*client).to_owned());
        }
        let (Some(t), Some(p), Some(c), Some(e), Some(l)) = (
            col("TOPIC"),
            col("PARTITION"),
            col("CURRENT-OFFSET"),
            col("LOG-END-OFFSET"),
            col("LAG"),
        ) else {
            continue;
        };
        if cells.len() <= l || cells[0] != group {
            continue;
        }
        let (Ok(current), Ok(end), Ok(lag)) =
            (cells[c].parse(), cells[e].parse(), cells[l].parse())
        else {
            continue; // "-": nothing committed on this partition
        };
        rows.insert(
            (cells[t].to_owned(), cells[p].parse().unwrap()),
            (current, end, lag),
        );
    }
    (rows, clients)
}

/// Waits until the group's committed offsets on `topic` satisfy `ok`.
async fn describe_until(
    brokers: &str,
    group: &str,
    topic: &str,
    what: &str,
    ok: impl Fn(i64, i64, i64) -> bool,
) -> (i64, i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, g) = (brokers.to_owned(), group.to_owned());
        let rows = tokio::task::spawn_blocking(move || describe(&b, &g))
            .await
            .unwrap();
        let sum = rows
            .iter()
            .filter(|((t, _), _)| t == topic)
            .fold((0, 0, 0), |a, (_, r)| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        if ok(sum.0, sum.1, sum.2) {
            return sum;
        }
        assert!(
            Instant::now() < deadline,
            "kafka-consumer-groups never showed {what} for {group} on {topic} within 60 s \
             (current, log-end, lag = {sum:?}; rows {rows:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn kcat_reads_the_topics_and_kafka_consumer_groups_shows_the_dataflow_lag() {
    // A private broker: the scenario's event times must not be late against
    // other tests' events, and the group's offsets are this test's alone.
    let kafka = PrivateKafka::start();
    let brokers = kafka.brokers();
    let prefix = unique("clients");
    let (user, project, group) = (
        format!("{prefix}-u"),
        format!("{prefix}-p"),
        format!("{prefix}-g"),
    );
    let mut server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--kafka-brokers",
        &brokers,
        "--set",
        &format!("redis.prefix={prefix}"),
        "--set",
        &format!("kafka.dataflow_group=\"{group}\""),
    ])
    .await;
    // 40 keystroke batches a second apart: 40 live WPM updates.
    let t0 = now_ms() - 50_000;
    let events = keystrokes(&prefix, &user, &project, t0, 40);
    assert_eq!(post_events(&server, &events).await, 202);

    // The event topic through kcat: every event, keyed by user, framed.
    let records = kcat_until(&brokers, "inkstream.events.writing", 40, |r| r.key == user).await;
    let ids: HashSet<String> = records.iter().map(|r| framed(r).id.to_string()).collect();
    let sent: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, sent, "kcat reads every ingested event once");
    let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 1, "one key, one partition");

    // The derived topic through kcat: 40 WPM updates (the user's), keyed by
    // project (beside the project's team metrics).
    // (Other metrics may carry the user too: WPM only.)
    let wpm = |r: &Record| {
        let e = schemas::confluent::decode(&r.value).unwrap();
        r.key == project
            && e.user_id == Some(user.clone().into())
            && matches!(&e.data, schemas::Payload::AnalyticsMetricUpdated(m) if m.metric == "wpm")
    };
    let derived = kcat_until(
        &brokers,
        "inkstream.derived.analytics.metric_updated",
        40,
        wpm,
    )
    .await;
    let derived_ids: HashSet<String> = derived.iter().map(|r| framed(r).id.to_string()).collect();
    assert_eq!(derived_ids.len(), 40, "40 distinct derived events");

    // Apache Kafka's consumer-groups tool: the dataflow's group has committed
    // all 40 records of the event topic, lag 0. The mirror writes them in
    // transactions, so the log also holds a commit marker per transaction,
    // which the group's offset steps over (lag 0, not 1 per marker).
    let (committed, _, _) = describe_until(
        &brokers,
        &group,
        "inkstream.events.writing",
        "every record committed and lag 0",
        |current, end, lag| current > 40 && current == end && lag == 0,
    )
    .await;
    // Its member names itself (`client.id`: broker logs, quotas), not
    // librdkafka's default `rdkafka`.
    let (b, g) = (brokers.clone(), group.clone());
    let (_, clients) = tokio::task::spawn_blocking(move || described(&b, &g))
        .await
        .unwrap();
    assert_eq!(
        clients,
        HashSet::from(["inkstream-source".to_owned()]),
        "the dataflow group's members' client ids"
    );

    // Stopped, with 5 records produced behind its back (kcat as producer):
    // the tool shows the group 5 records behind.
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.expect("exited within 20 s").success());
    // One file per record (kcat -P sends each file as one message): copies
    // of five of the records above, on their partition.
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = records[..5]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = dir.join(format!("{i}.avro"));
            std::fs::write(&path, &r.value).unwrap();
            path.display().to_string()
        })
        .collect();
    let partition = records[0].partition.to_string();
    let out = std::process::Command::new(kcat())
        .args(["-P", "-b", &brokers, "-t", "inkstream.events.writing"])
        .args(["-p", &partition])
        .args(&files)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "kcat -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    describe_until(
        &brokers,
        &group,
        "inkstream.events.writing",
        "a lag of 5 after 5 records produced while it was stopped",
        |current, end, lag| current == committed && end == committed + 5 && lag == 5,
    )
    .await;
}

/// A consumer that joins the dataflow's group with the source's static
/// member id (`group.instance.id`: a second instance configured with the
/// first one's place, or a zombie's replacement) fences the source, which
/// librdkafka calls fatal: it can read nothing more. The process stops
/// saying so instead of running on, healthy to look at, with a dataflow
/// that reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_fenced_by_its_static_member_id_stops_its_process() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let brokers = inkstream_tests::kafka_brokers();
    let prefix = unique("source-fence");
    let group = format!("{prefix}-g");
    let args = [
        "--redis-url".to_owned(),
        redis_url(),
        "--kafka-brokers".to_owned(),
        brokers.clone(),
        "--set".to_owned(),
        format!("redis.prefix={prefix}"),
        "--set".to_owned(),
        format!("kafka.dataflow_group=\"{group}\""),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, log) = inkstream_tests::Server::start_logged(&args).await;

    // The source is a member once it has read a record.
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let events = keystrokes(&prefix, &user, &project, now_ms(), 1);
    assert_eq!(post_events(&server, &events).await, 202);
    let deadline = Instant::now() + Duration::from_secs(90);
    while inkstream_tests::metric(&server, "inkstream_dataflow_source_records_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the dataflow's Kafka source read no record within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A consumer with its member id joins.
    let fencer: StreamConsumer = connectors::kafka::client_config(brokers.as_str())
        .set("group.id", &group)
        .set("group.instance.id", format!("{group}-p0-r0"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| connectors::kafka::events_topic(*c))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    fencer.subscribe(&topics).unwrap();
    let polling = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), fencer.recv()).await;
        }
    });
    let exited = inkstream_tests::exit_within(&mut server.child, Duration::from_secs(90)).await;
    polling.abort();
    let (status, _) = exited.expect("the fenced source's process did not stop within 90 s");
    let log = log.lock().unwrap().clone();
    assert!(!status.success(), "the fenced process exited cleanly");
    assert!(
        log.contains("the Kafka source hit a fatal error") && log.contains("fencing it back"),
        "the process did not say that its source was fenced: {log}"
    );
}
