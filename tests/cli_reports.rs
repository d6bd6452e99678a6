//! Issue 15's CLI items: `--json` reports from compact, keys, import and export, whose figures
//! are the ones `stats` names; `compact` telling dropped records from given-back file space;
//! `import --keep-going`; `put` of one shard file; shell completions.

mod common;

use common::cli::*;

use serde_json::Value as Json;

/// Two MessagePack samples: `{"a": 1}` and `{"a": 2}`.
const PAYLOAD: &[u8] = b"\x81\xa1a\x01\x81\xa1a\x02";

fn json(o: &std::process::Output) -> Json {
    assert_code(o, 0);
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {:?}", stdout(o)))
}

fn stats_json(store: &std::path::Path) -> Json {
    json(&run(["stats", "--json", p(store)]))
}

#[test]
fn compact_reports_records_and_file_bytes_as_stats_names_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(
        tmp.path(),
        &[("a", PAYLOAD), ("b", PAYLOAD), ("c", PAYLOAD)],
    );
    assert_code(&run(["rm", p(&store), "b"]), 0);
    let before = stats_json(&store);

    let report = json(&run(["compact", "--json", p(&store)]));
    let after = stats_json(&store);
    assert_eq!(report["segment_len_before"], before["segment_len"]);
    assert_eq!(
        report["segment_file_len_before"],
        before["segment_file_len"]
    );
    assert_eq!(report["segment_len_after"], after["segment_len"]);
    assert_eq!(report["segment_file_len_after"], after["segment_file_len"]);
    assert_eq!(report["live_records"], 2);
    let n = |v: &Json| v.as_u64().expect("a number");
    // `dropped` is the dead records only; `reclaimed` adds the preallocated tail.
    assert_eq!(
        n(&report["dropped"]),
        n(&before["segment_len"]) - n(&after["segment_len"])
    );
    // Dead records and old sync marks go; the compacted segment ends with one new mark.
    assert_eq!(
        n(&report["dropped"]) + 32,
        n(&before["dead_bytes"]),
        "{report} {before}"
    );
    assert!(n(&report["dropped"]) < n(&report["reclaimed"]), "{report}");

    // The text says both, apart.
    assert_code(&run(["rm", p(&store), "c"]), 0);
    let o = run(["compact", p(&store)]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains("of dead records dropped") && text.contains("given back"),
        "{text}"
    );
}

#[test]
fn keys_json_is_an_array_of_the_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("b", PAYLOAD), ("a\nz", PAYLOAD)]);
    let keys = json(&run(["keys", "--json", p(&store)]));
    assert_eq!(keys, serde_json::json!(["a\nz", "b"]));
    assert_code(&run(["keys", "--json", "--null", p(&store)]), 2);
}

#[test]
fn import_keep_going_stores_the_good_files_and_lists_the_bad() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("sq");
    std::fs::create_dir_all(&src).expect("mkdir");
    gzip(&src.join("good1.gz"), PAYLOAD);
    gzip(&src.join("good2.gz"), PAYLOAD);
    std::fs::write(src.join("notgzip.gz"), b"plain text").expect("writes");
    gzip(&src.join("truncated.gz"), b"\x81\xa1a"); // a sample cut short

    // Without --keep-going the first bad file stops the import.
    let store = tmp.path().join("st1");
    let o = run(["import", p(&src), p(&store)]);
    assert_code(&o, 2);

    let store = tmp.path().join("st2");
    let o = run(["import", "--keep-going", "--json", p(&src), p(&store)]);
    assert_code(&o, 1);
    let report: Json = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(report["shards"], 4);
    assert_eq!(report["written"], 2);
    assert_eq!(report["samples"], 4);
    let failed: Vec<&str> = report["failed"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|f| f["key"].as_str().expect("a key"))
        .collect();
    assert_eq!(failed, ["notgzip", "truncated"]);
    let err = stderr(&o);
    assert!(
        err.contains("\"notgzip\"") && err.contains("\"truncated\""),
        "{err}"
    );
    let keys = json(&run(["keys", "--json", p(&store)]));
    assert_eq!(keys, serde_json::json!(["good1", "good2"]));
}

#[test]
fn export_json_reports_what_was_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("a", PAYLOAD), ("b", PAYLOAD)]);
    let dst = tmp.path().join("out");
    let report = json(&run(["export", "--json", p(&store), p(&dst)]));
    assert_eq!(report["shards"], 2);
    assert_eq!(report["payload_bytes"], 2 * PAYLOAD.len());
    let on_disk: u64 = ["a.gz", "b.gz"]
        .iter()
        .map(|f| std::fs::metadata(dst.join(f)).expect("exported").len())
        .sum();
    assert_eq!(report["file_bytes"], on_disk);
    assert_eq!(report["invalid_keys"], serde_json::json!([]));
}

#[test]
fn put_stores_one_shard_file_gzipped_or_plain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("st");
    let gz = tmp.path().join("shard7.gz");
    gzip(&gz, PAYLOAD);
    assert_code(&run(["put", p(&store), p(&gz)]), 0);
    let plain = tmp.path().join("plain.msgpack");
    std::fs::write(&plain, PAYLOAD).expect("writes");
    assert_code(&run(["put", "--key", "other", p(&store), p(&plain)]), 0);

    let keys = json(&run(["keys", "--json", p(&store)]));
    assert_eq!(keys, serde_json::json!(["other", "shard7"]));
    for key in ["shard7", "other"] {
        let o = run(["get", "--raw", p(&store), key]);
        assert_code(&o, 0);
        assert_eq!(o.stdout, PAYLOAD, "{key}");
    }

    // Not whole samples: refused, nothing stored.
    let bad = tmp.path().join("bad.gz");
    gzip(&bad, b"\x81\xa1a");
    let o = run(["put", p(&store), p(&bad)]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("bad"), "{}", stderr(&o));
    assert_eq!(
        json(&run(["keys", "--json", p(&store)])),
        serde_json::json!(["other", "shard7"])
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(["completions", shell]);
        assert_code(&o, 0);
        let script = stdout(&o);
        for word in ["squirrel-store", "compact", "rebuild-index", "--keep-going"] {
            assert!(script.contains(word), "{shell}: {word}");
        }
    }
    assert_code(&run(["completions", "tcsh"]), 2);
}
