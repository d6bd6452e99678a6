//! `verify --json`: the findings machine-readably (issue 10), and the text's grammar (issue 15).

mod common;

use common::cli::*;

use serde_json::Value as Json;
use squirrel_store::Engine;
use squirrel_store::serializer::Codec;

#[test]
fn verify_json_gives_the_findings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("a", b"\x01\x02"), ("b", b"\x03")]);
    let o = run(["verify", "--json", p(&store)]);
    assert_code(&o, 0);
    let v: Json = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], 0);
    assert_eq!(v["records"], 2);
    assert_eq!(v["intact"], 2);
    assert_eq!(v["live_keys"], 2);
    assert_eq!(v["damaged"], serde_json::json!([]));
    assert_eq!(v["torn_tail"], Json::Null);
    assert_eq!(v["index"]["state"], "consistent");
    assert_eq!(v["shards"]["decoded"], 2);
    assert_eq!(v["shards"]["samples"], 3);

    // An intact record that is no shard, and a damaged record followed by a later write.
    let engine = Engine::open(&store).expect("opens");
    engine
        .put("frame", Codec::MsgpackZstd.as_u8(), b"not a zstd frame")
        .expect("puts");
    engine.put("victim", 2, &[0x55; 4096]).expect("puts");
    engine.set("later", b"a later append").expect("sets");
    engine.close().expect("closes");
    let seg = store.join("segment.sqs");
    let mut bytes = std::fs::read(&seg).expect("reads");
    let at = bytes
        .windows(64)
        .position(|w| w.iter().all(|b| *b == 0x55))
        .expect("the value is there");
    bytes[at + 100] ^= 0x40;
    std::fs::write(&seg, &bytes).expect("writes");

    let o = run(["verify", "--json", p(&store)]);
    assert_code(&o, 1);
    let v: Json = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["ok"], false);
    let damaged = v["damaged"].as_array().expect("a list");
    assert_eq!(damaged.len(), 1, "{v}");
    assert_eq!(damaged[0]["key"], "victim");
    assert!(damaged[0]["offset"].as_u64().is_some(), "{v}");
    assert!(damaged[0]["what"].as_str().is_some(), "{v}");
    let failures = v["shards"]["failures"].as_array().expect("a list");
    assert!(failures.iter().any(|f| f["key"] == "frame"), "{v}");
    assert!(v["problems"].as_u64().expect("a count") >= 2, "{v}");

    // The text says the same, in good English.
    let o = run(["verify", p(&store)]);
    assert_code(&o, 1);
    assert!(stdout(&o).contains("problems found"), "{}", stdout(&o));
}

#[test]
fn verify_says_one_problem_not_one_problems() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("a", b"\x01")]);
    let engine = Engine::open(&store).expect("opens");
    engine
        .put("frame", Codec::MsgpackZstd.as_u8(), b"not a zstd frame")
        .expect("puts");
    engine.close().expect("closes");
    let o = run(["verify", p(&store)]);
    assert_code(&o, 1);
    assert!(
        stdout(&o).contains("damaged: 1 problem found"),
        "{}",
        stdout(&o)
    );
}
