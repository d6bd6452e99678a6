//! The commands on stores given as URLs: the read commands (stats, verify, keys, get, export)
//! on a published store or dataset, and push, pull, dataset add/ls.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use indicatif::HumanBytes;
use squirrel_store::Store;
use squirrel_store::remote::{
    self, Dataset, RemoteError, RemoteOptions, RemoteSquirrelStore, RemoteStore, is_url,
};

use super::{CliError, Command, DatasetCommand, Outcome, print_shard, quiet, shard_outcome};

static OPTIONS: OnceLock<Vec<String>> = OnceLock::new();

/// Keeps the `--option KEY=VALUE` arguments for the commands that open a URL.
pub(super) fn set_options(options: Vec<String>) {
    let _ = OPTIONS.set(options);
}

fn options() -> Result<RemoteOptions, CliError> {
    let mut opts = RemoteOptions::new();
    for o in OPTIONS.get().map(Vec::as_slice).unwrap_or_default() {
        let Some((k, v)) = o.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--option {o:?}: expected KEY=VALUE"
            )));
        };
        opts = opts.option(k, v);
    }
    Ok(opts)
}

fn url_of(store: &Path) -> Option<&str> {
    store.to_str().filter(|s| is_url(s))
}

/// Runs `command` if it is one of this module's; else gives it back.
pub(super) fn run(command: Command) -> Result<Result<Outcome, CliError>, Command> {
    match command {
        Command::Push { store, url } => Ok(push(&store, &url)),
        Command::Pull { url, store } => Ok(pull(&url, &store)),
        Command::Dataset(DatasetCommand::Add { dataset, store }) => {
            Ok(dataset_add(&dataset, &store))
        }
        Command::Dataset(DatasetCommand::Ls { dataset, json }) => Ok(dataset_ls(&dataset, json)),
        Command::Stats {
            ref store,
            json,
            compression,
        } if url_of(store).is_some() => {
            Ok(stats(url_of(store).unwrap_or_default(), json, compression))
        }
        Command::Verify { ref store, json } if url_of(store).is_some() => {
            Ok(verify(url_of(store).unwrap_or_default(), json))
        }
        Command::Keys {
            ref store,
            json,
            null,
        } if url_of(store).is_some() => Ok(keys(url_of(store).unwrap_or_default(), json, null)),
        Command::Get {
            ref store,
            ref key,
            raw,
            json,
        } if url_of(store).is_some() => Ok(get(url_of(store).unwrap_or_default(), key, raw, json)),
        Command::Export {
            ref store,
            ref squirrel_dir,
            json,
        } if url_of(store).is_some() => Ok(export(
            url_of(store).unwrap_or_default(),
            squirrel_dir,
            json,
        )),
        other => Err(other),
    }
}

fn push(store: &Path, url: &str) -> Result<Outcome, CliError> {
    let report = remote::push(store, url, options()?)?;
    if !quiet() {
        println!(
            "pushed {} to {}: {} keys, {} of segment{}, {} of index, {} requests",
            store.display(),
            report.url,
            report.keys,
            HumanBytes(report.segment_bytes),
            if report.multipart { " (multipart)" } else { "" },
            HumanBytes(report.index_bytes),
            report.requests
        );
    }
    Ok(Outcome::Done)
}

fn pull(url: &str, store: &Path) -> Result<Outcome, CliError> {
    let report = remote::pull(url, store, options()?)?;
    if !quiet() {
        println!(
            "pulled {url} into {}: {} keys, {}",
            report.dir.display(),
            report.keys,
            HumanBytes(report.bytes)
        );
    }
    Ok(Outcome::Done)
}

fn dataset_add(dataset: &str, store: &str) -> Result<Outcome, CliError> {
    let manifest = remote::dataset_add(dataset, store, options()?)?;
    if !quiet() {
        println!("{dataset}: {} stores", manifest.stores.len());
    }
    Ok(Outcome::Done)
}

fn dataset_ls(dataset: &str, json: bool) -> Result<Outcome, CliError> {
    let manifest = remote::dataset_ls(dataset, options()?)?;
    let mut out = io::stdout().lock();
    if json {
        let text = serde_json::to_string(&manifest).map_err(io::Error::from)?;
        writeln!(out, "{text}")?;
    } else {
        for e in &manifest.stores {
            writeln!(
                out,
                "{}\t{} keys\tsegment {}",
                e.store, e.keys, e.segment_id
            )?;
        }
    }
    Ok(Outcome::Done)
}

fn stats(url: &str, json: bool, compression: bool) -> Result<Outcome, CliError> {
    if compression {
        return Err(CliError::Usage(
            "--compression reads every shard: `squirrel-store pull` the store and run stats on the copy".into(),
        ));
    }
    let st = match RemoteStore::open(url, options()?) {
        Ok(store) => store.stats(),
        // No store at the URL: a dataset's, perhaps.
        Err(squirrel_store::Error::Remote(e)) if matches!(*e, RemoteError::NotPublished { .. }) => {
            return dataset_stats(url, json, squirrel_store::Error::Remote(e));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = io::stdout().lock();
    if json {
        let obj = serde_json::json!({
            "store": url,
            "format_version": st.format_version,
            "keys": st.live_records,
            "live_records": st.live_records,
            "live_bytes": st.live_bytes,
            "dead_records": st.dead_records,
            "dead_bytes": st.dead_bytes,
            "segment_len": st.segment_len,
            "index_file_len": st.index_len,
            "segment_id": format!("{:016x}", st.segment_id),
            "requests": st.requests,
        });
        writeln!(out, "{obj}")?;
        return Ok(Outcome::Done);
    }
    writeln!(out, "store           {url}")?;
    writeln!(out, "format version  {}", st.format_version)?;
    writeln!(out, "segment id      {:016x}", st.segment_id)?;
    writeln!(out, "keys            {}", st.live_records)?;
    writeln!(
        out,
        "live records    {} ({})",
        st.live_records,
        HumanBytes(st.live_bytes)
    )?;
    writeln!(
        out,
        "dead records    {} ({})",
        st.dead_records,
        HumanBytes(st.dead_bytes)
    )?;
    writeln!(out, "segment         {}", HumanBytes(st.segment_len))?;
    writeln!(out, "index           {}", HumanBytes(st.index_len))?;
    Ok(Outcome::Done)
}

/// `stats` of a dataset: its stores and their keys; `not_store` is reported when there is no
/// dataset either.
fn dataset_stats(
    url: &str,
    json: bool,
    not_store: squirrel_store::Error,
) -> Result<Outcome, CliError> {
    let ds = match Dataset::open(url, options()?) {
        Ok(ds) => ds,
        Err(squirrel_store::Error::Remote(e)) if matches!(*e, RemoteError::NotFound { .. }) => {
            return Err(not_store.into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = io::stdout().lock();
    if json {
        let stores: Vec<_> = ds
            .stores()
            .iter()
            .map(|s| {
                let st = s.stats();
                serde_json::json!({"store": st.url, "keys": st.live_records, "live_bytes": st.live_bytes})
            })
            .collect();
        let obj = serde_json::json!({"dataset": url, "keys": ds.keys().len(), "stores": stores});
        writeln!(out, "{obj}")?;
        return Ok(Outcome::Done);
    }
    writeln!(out, "dataset         {url}")?;
    writeln!(out, "stores          {}", ds.stores().len())?;
    writeln!(out, "keys            {}", ds.keys().len())?;
    for s in ds.stores() {
        let st = s.stats();
        writeln!(
            out,
            "  {}  {} keys, {}",
            st.url,
            st.live_records,
            HumanBytes(st.live_bytes)
        )?;
    }
    Ok(Outcome::Done)
}

fn verify(url: &str, json: bool) -> Result<Outcome, CliError> {
    let report = RemoteStore::open(url, options()?)?.verify()?;
    let problems = report.damaged.len() + report.index_issues.len();
    let mut out = io::stdout().lock();
    if json {
        let damaged: Vec<_> = report
            .damaged
            .iter()
            .map(|(offset, what)| serde_json::json!({"offset": offset, "what": what}))
            .collect();
        let obj = serde_json::json!({
            "store": url,
            "ok": problems == 0,
            "problems": problems,
            "records": report.records,
            "intact": report.intact,
            "live_keys": report.live_keys,
            "damaged": damaged,
            "index": {"issues": report.index_issues},
            "bytes_read": report.bytes_read,
        });
        writeln!(out, "{obj}")?;
    } else {
        if !quiet() {
            writeln!(
                out,
                "{url}: {} records read, {} intact, {} live keys ({} read; shards are not decoded remotely: pull the store to check them)",
                report.records,
                report.intact,
                report.live_keys,
                HumanBytes(report.bytes_read)
            )?;
        }
        for (offset, what) in &report.damaged {
            writeln!(out, "damaged record at offset {offset}: {what}")?;
        }
        for issue in &report.index_issues {
            writeln!(out, "index: {issue}")?;
        }
    }
    Ok(if problems == 0 {
        Outcome::Done
    } else {
        Outcome::Problem
    })
}

fn keys(url: &str, as_json: bool, null: bool) -> Result<Outcome, CliError> {
    let store = RemoteSquirrelStore::open(url, options()?)?;
    super::print_keys(store.keys()?, as_json, null)
}

fn get(url: &str, key: &str, raw: bool, json: bool) -> Result<Outcome, CliError> {
    let store = RemoteSquirrelStore::open(url, options()?)?;
    let result = match store.get_record(key) {
        Ok(Some(v)) => print_shard(key, &v, v.codec(), raw, json),
        Ok(None) => {
            eprintln!("squirrel-store: no key {key:?} in {url}");
            return Ok(Outcome::Problem);
        }
        Err(e) => Err(e.into()),
    };
    shard_outcome(result)
}

/// `export URL DIR`: the store is pulled into a temporary directory (export reads every shard
/// anyway, so this downloads nothing more), exported from there, and the copy removed.
fn export(url: &str, dst: &Path, as_json: bool) -> Result<Outcome, CliError> {
    let tmp: PathBuf = std::env::temp_dir().join(format!(
        "squirrel-store-export-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = remote::pull(url, &tmp, options()?)
        .map_err(CliError::from)
        .and_then(|_| super::export(&tmp, dst, as_json));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
