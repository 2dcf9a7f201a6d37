//! What a change to the key set and a key list cost at 1k, 100k and 1M keys:
//!
//! - `key_index/apply_one/{1k,100k,1M}`: `KeyIndex::apply` of one changed key (a revoke) —
//!   what makes one change live, whatever the number of keys.
//! - `key_index/apply_one_on_1k_overlay/1M`: the same with 1000 changes already applied.
//! - `key_index/lookup_with_1k_overlay/1M`: a lookup while 1000 changes wait in the overlay
//!   (compare with `keycheck/parts/lookup/1M`, an index without one).
//! - `key_index/reload_one_changed/100k`: a key-file reload that finds one record changed (a
//!   digest of every record's text, only the changed one parsed, one apply), for a file in
//!   the writer's layout (`written`, read a line at a time) and in another (`compact`, one
//!   line, scanned as JSON), vs `key_index/rebuild/100k`, a full load.
//! - `key_index/compact/1M`: folding 1000 changes into a new base (what the background
//!   compaction costs).
//! - `key_list/page/1M/*`: one page of `GET /v1/api-keys` chosen from 1M keys (`keys::list::page`),
//!   default (newest first), filtered, and sorted by name and by last use; then the JSON of
//!   the page.
//!
//! Run: `cargo bench --bench key_index` (a few minutes on 2 cores; 1M keys are generated
//! once). Filter with e.g. `cargo bench --bench key_index -- key_list`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keygate::config::LimitDefaults;
use keygate::keys::entry::KeyId;
use keygate::keys::file::{KeyFile, FILE_VERSION};
use keygate::keys::index::{KeyChange, KeyIndex};
use keygate::keys::list::{self, Filter, ListQuery, Order, SortBy};
use keygate::keys::record::{hash_hex, KeyRecord};
use keygate::keys::token as key;
use keygate::keys::view::KeyView;
use keygate::time::Timestamp;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];

fn limits() -> LimitDefaults {
    keygate::config::Config::parse("", None).unwrap().limits
}

/// 1M records as a fleet has them: names in a few families, labels on a third, a description
/// on a tenth, expiry on a quarter, creation times spread over a year.
fn records() -> &'static [KeyRecord] {
    static RECORDS: OnceLock<Vec<KeyRecord>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let now = Timestamp::now();
        (0..SIZES[2].0)
            .map(|i| {
                let t = key::generate("sk_kg").unwrap();
                let created = Timestamp(now.0 - 365 * 86_400 + (i as u64 * 31) % (365 * 86_400));
                KeyRecord {
                    id: format!("key_{i:016}"),
                    name: format!("{}-{}", ["search", "ads", "batch-reindex"][i % 3], i % 5000),
                    sha256: hash_hex(&t.hash),
                    last4: t.last4,
                    scopes: vec![],
                    created_at: created,
                    expires_at: (i % 4 == 0)
                        .then(|| now.plus(Duration::from_secs((i as u64 % 90) * 86_400))),
                    metadata: if i % 3 == 0 {
                        BTreeMap::from([(
                            "team".into(),
                            ["search", "ads", "infra"][i % 9 / 3].into(),
                        )])
                    } else {
                        BTreeMap::new()
                    },
                    description: (i % 10 == 0).then(|| format!("service account {i}")),
                    rev: 1,
                    ..KeyRecord::default()
                }
            })
            .collect()
    })
}

fn text(recs: &[KeyRecord]) -> String {
    serde_json::to_string(&KeyFile {
        version: FILE_VERSION,
        keys: recs.to_vec(),
    })
    .unwrap()
}

fn load(text: &str) -> KeyIndex {
    KeyIndex::load(Path::new("keys.json"), text, &limits(), None).unwrap()
}

/// `n` changes (a rename each) to keys spread over the first `of` records.
fn renames(n: usize, of: usize) -> Vec<KeyChange> {
    (0..n)
        .map(|i| {
            let mut r = records()[(i * (of / n)) % of].clone();
            r.name.push_str("-renamed");
            KeyChange::Put(r)
        })
        .collect()
}

fn bench_changes(c: &mut Criterion) {
    for (n, label) in SIZES {
        let started = Instant::now();
        let index = load(&text(&records()[..n]));
        eprintln!("{label}: loaded in {:.3}s", started.elapsed().as_secs_f64());
        let mut revoked = records()[n / 2].clone();
        revoked.revoked_at = Some(Timestamp::now());
        let mut g = c.benchmark_group("key_index/apply_one");
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                index
                    .apply(vec![KeyChange::Put(black_box(revoked.clone()))])
                    .unwrap()
            })
        });
        g.finish();
        if n != SIZES[2].0 {
            if n == SIZES[1].0 {
                let mut recs = records()[..n].to_vec();
                let file = text(&recs);
                recs[n / 3].revoked_at = Some(Timestamp::now());
                let changed = text(&recs);
                let mut g = c.benchmark_group("key_index");
                g.sample_size(10);
                let written = keygate::keys::writer::file_text(&KeyFile {
                    version: FILE_VERSION,
                    keys: recs.clone(),
                });
                for (layout, changed) in [("compact", &changed), ("written", &written)] {
                    g.bench_function(format!("reload_one_changed/{label}/{layout}"), |b| {
                        b.iter(|| {
                            KeyIndex::reload(
                                Path::new("k"),
                                black_box(changed),
                                &limits(),
                                Some(&index),
                            )
                            .unwrap()
                            .1
                        })
                    });
                }
                g.bench_function(format!("rebuild/{label}"), |b| {
                    b.iter(|| load(black_box(&file)).len())
                });
                g.finish();
            }
            continue;
        }
        // 1M: with 1000 changes waiting in the overlay.
        let overlaid = Arc::new(index.apply(renames(1000, n)).unwrap());
        let mut g = c.benchmark_group("key_index");
        g.bench_function(format!("apply_one_on_1k_overlay/{label}"), |b| {
            b.iter(|| {
                overlaid
                    .apply(vec![KeyChange::Put(black_box(revoked.clone()))])
                    .unwrap()
            })
        });
        let hashes: Vec<key::KeyHash> = (0..1024)
            .map(|i| {
                key::KeyHash::try_from(hex::decode(&records()[i * 977].sha256).unwrap()).unwrap()
            })
            .collect();
        let mut j = 0;
        g.bench_function(format!("lookup_with_1k_overlay/{label}"), |b| {
            b.iter(|| {
                j = (j + 1) % hashes.len();
                black_box(overlaid.lookup(black_box(&hashes[j])).is_some())
            })
        });
        g.sample_size(10);
        g.bench_function(format!("compact/{label}"), |b| {
            b.iter(|| overlaid.compact().len())
        });
        g.finish();
        drop(overlaid);
        bench_pages(c, Arc::new(index), label);
    }
}

fn bench_pages(c: &mut Criterion, index: Arc<KeyIndex>, label: &str) {
    // A tenth of the keys have been used.
    for i in (0..index.len()).step_by(10) {
        let id = format!("key_{i:016}");
        let state = index.state_for(&id).unwrap();
        state.usage.last_used.store(
            1_700_000_000 + (i as u64 * 7) % 10_000_000,
            Ordering::Relaxed,
        );
    }
    let now = Timestamp::now();
    let query = |filter: Filter, sort: SortBy| ListQuery {
        filter,
        sort,
        order: Order::Desc,
        limit: 20,
        after: None,
    };
    let team = Filter {
        meta: vec![("team".into(), "search".into())],
        name_prefix: Some("search-1".into()),
        ..Filter::default()
    };
    let mut g = c.benchmark_group(format!("key_list/page/{label}"));
    g.sample_size(20);
    for (name, q) in [
        ("default", query(Filter::default(), SortBy::CreatedAt)),
        ("meta_and_name_prefix", query(team, SortBy::CreatedAt)),
        ("sort_name", query(Filter::default(), SortBy::Name)),
        (
            "sort_last_used",
            query(Filter::default(), SortBy::LastUsedAt),
        ),
        (
            "after_cursor_limit_100",
            ListQuery {
                limit: 100,
                after: KeyId::new("key_0000000000500000"),
                ..query(Filter::default(), SortBy::CreatedAt)
            },
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let page = list::page(&index, black_box(&q), now).unwrap();
                let data: Vec<serde_json::Value> = page
                    .keys
                    .iter()
                    .map(|e| KeyView::of_entry(e).json("sk_kg", now, index.usage(e).as_ref()))
                    .collect();
                serde_json::to_vec(&data).unwrap().len()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_changes
}
criterion_main!(benches);
