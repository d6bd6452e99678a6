//! Datasets of many published stores: a manifest, `dataset.json`, at a URL prefix, listing its
//! stores; [`dataset_add`] adds to it with a conditional put, so two writers adding at once
//! never lose an entry; [`Dataset`] reads all the stores as one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::RemoteOptions;
use super::client::{Client, block_on, is_url};
use super::error::RemoteError;
use super::store::{RemoteStore, RemoteValue};
use crate::error::{Error, Result};

/// The dataset manifest's object name.
pub(crate) const DATASET: &str = "dataset.json";
/// The largest manifest read.
const DATASET_MAX: u64 = 64 << 20;
/// Conditional-put attempts before [`RemoteError::Contended`].
const ADD_TRIES: u32 = 64;

/// One store of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetEntry {
    /// The store: a path relative to the dataset's URL (`store-0`, `node-3/shards`), or a URL.
    pub store: String,
    /// The store's segment id when it was added (16 hex digits); opening the dataset checks it,
    /// so a store re-published since is not read under an old entry (add it again).
    pub segment_id: String,
    /// Its live keys when it was added.
    pub keys: u64,
}

/// `dataset.json`: the stores of a dataset, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetManifest {
    /// Always `"squirrel-store-dataset"`.
    pub format: String,
    /// Version of this layout: 1.
    pub version: u32,
    /// The stores.
    pub stores: Vec<DatasetEntry>,
}

impl DatasetManifest {
    fn parse(url: &str, bytes: &[u8]) -> Result<DatasetManifest> {
        let m: DatasetManifest =
            serde_json::from_slice(bytes).map_err(|e| RemoteError::BadManifest {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        if m.format != "squirrel-store-dataset" || m.version != 1 {
            return Err(RemoteError::BadManifest {
                url: url.to_owned(),
                reason: format!(
                    "format {:?} version {}; this build reads \"squirrel-store-dataset\" version 1",
                    m.format, m.version
                ),
            }
            .into());
        }
        Ok(m)
    }
}

/// The store an entry names, relative to the dataset's client.
fn entry_client(dataset: &Client, store: &str) -> Result<Client> {
    if is_url(store) {
        Client::new(store, Arc::new(dataset.options().clone()))
    } else {
        Ok(dataset.child(store))
    }
}

/// The name an added store is recorded under: relative when it lies under the dataset's URL.
fn entry_name(dataset_url: &str, store_url: &str) -> String {
    let base = format!("{}/", dataset_url.trim_end_matches('/'));
    match store_url.strip_prefix(&base) {
        Some(rel) if !rel.is_empty() => rel.trim_end_matches('/').to_owned(),
        _ => store_url.trim_end_matches('/').to_owned(),
    }
}

/// Reads `dataset.json` and its ETag; `None` when there is none.
async fn read_manifest(c: &Client) -> Result<Option<(DatasetManifest, Option<String>)>> {
    match c.get_prefix(DATASET, DATASET_MAX).await? {
        Some((bytes, size, etag)) => {
            if size > DATASET_MAX {
                return Err(RemoteError::BadManifest {
                    url: c.url_of(DATASET),
                    reason: format!("{size} bytes, more than the {DATASET_MAX} allowed"),
                }
                .into());
            }
            Ok(Some((
                DatasetManifest::parse(&c.url_of(DATASET), &bytes)?,
                etag,
            )))
        }
        None => Ok(None),
    }
}

/// Adds the published store at `store_url` to the dataset at `dataset_url` (creating the
/// manifest if there is none), or updates its entry if it is already listed. Returns the
/// manifest as written.
///
/// The manifest is replaced with a conditional put (`If-None-Match: *` to create it,
/// `If-Match: ETAG` to update it): when another writer changed it in between, the put fails,
/// and the manifest is read again and the entry added again, so concurrent adds never lose one.
/// Keys are not compared here; a key in two stores makes [`Dataset::open`] fail.
///
/// # Errors
///
/// Those of [`RemoteStore::open`] for the store; [`RemoteError::Contended`] after 64 lost
/// races; [`RemoteError::Unsupported`] when the object store has no conditional put.
pub fn dataset_add(
    dataset_url: &str,
    store_url: &str,
    opts: RemoteOptions,
) -> Result<DatasetManifest> {
    let dataset = Client::new(dataset_url, Arc::new(opts))?;
    let name = entry_name(dataset.url(), store_url);
    let store = RemoteStore::open_client(entry_client(&dataset, &name)?)?;
    let entry = DatasetEntry {
        store: name,
        segment_id: format!("{:016x}", store.segment_id()),
        keys: store.stats().live_records,
    };
    block_on(async move {
        for attempt in 0..ADD_TRIES {
            let (mut manifest, etag) = match read_manifest(&dataset).await? {
                Some((m, etag)) => (m, Some(etag)),
                None => (
                    DatasetManifest {
                        format: "squirrel-store-dataset".into(),
                        version: 1,
                        stores: Vec::new(),
                    },
                    None,
                ),
            };
            match manifest.stores.iter_mut().find(|e| e.store == entry.store) {
                Some(e) if *e == entry => return Ok(manifest),
                Some(e) => *e = entry.clone(),
                None => manifest.stores.push(entry.clone()),
            }
            let body = serde_json::to_vec_pretty(&manifest).map_err(|e| RemoteError::Other {
                url: dataset.url_of(DATASET),
                detail: e.to_string(),
            })?;
            let mode = match etag {
                // No ETag from the server: a plain overwrite would lose entries; refuse.
                Some(None) => {
                    return Err(RemoteError::Unsupported {
                        url: dataset.url_of(DATASET),
                        detail: "the server gave no ETag for the manifest".into(),
                    }
                    .into());
                }
                Some(Some(tag)) => Some(Some(tag)),
                None => Some(None),
            };
            if dataset.put(DATASET, Bytes::from(body), mode).await? {
                return Ok(manifest);
            }
            // Lost a race: back off a little (more each time, with jitter) and read again.
            let ms = 5 * u64::from(attempt.min(20) + 1) + rand::random::<u64>() % 20;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Err(RemoteError::Contended {
            url: dataset.url_of(DATASET),
            attempts: ADD_TRIES,
        }
        .into())
    })?
}

/// The dataset manifest at `dataset_url`.
///
/// # Errors
///
/// [`RemoteError::NotFound`] when there is none; [`RemoteError::BadManifest`]; request errors.
pub fn dataset_ls(dataset_url: &str, opts: RemoteOptions) -> Result<DatasetManifest> {
    let dataset = Client::new(dataset_url, Arc::new(opts))?;
    block_on(async move {
        match read_manifest(&dataset).await? {
            Some((m, _)) => Ok(m),
            None => Err(RemoteError::NotFound {
                url: dataset.url_of(DATASET),
            }
            .into()),
        }
    })?
}

/// Every store of a dataset, read as one read-only store.
///
/// **Keys must be unique across the dataset**: opening reads every store's key list and fails
/// with [`RemoteError::DuplicateKey`], naming the key and both stores, when a key is in two.
/// (Picking one silently would make what a key reads depend on the order of the manifest.)
#[derive(Debug, Clone)]
pub struct Dataset {
    inner: Arc<DatasetInner>,
}

#[derive(Debug)]
struct DatasetInner {
    url: String,
    manifest: DatasetManifest,
    stores: Vec<RemoteStore>,
    keys: Vec<String>,
    /// Key → index into `stores`.
    owner: HashMap<String, usize>,
}

impl Dataset {
    /// Opens the dataset at `url`: its manifest, then every store (their opens and key lists
    /// are fetched several at a time).
    ///
    /// # Errors
    ///
    /// [`RemoteError::NotFound`] when there is no `dataset.json`; [`RemoteError::DuplicateKey`];
    /// [`RemoteError::Republished`] when a store's segment id is not the one listed; the errors
    /// of [`RemoteStore::open`].
    pub fn open(url: &str, opts: RemoteOptions) -> Result<Dataset> {
        let client = Client::new(url, Arc::new(opts))?;
        let c = client.clone();
        let manifest = block_on(async move { read_manifest(&c).await })??
            .ok_or_else(|| {
                Error::from(RemoteError::NotFound {
                    url: client.url_of(DATASET),
                })
            })?
            .0;
        let mut stores = Vec::with_capacity(manifest.stores.len());
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut keys = Vec::new();
        for (i, entry) in manifest.stores.iter().enumerate() {
            let store = RemoteStore::open_client(entry_client(&client, &entry.store)?)?;
            let id = format!("{:016x}", store.segment_id());
            if id != entry.segment_id {
                return Err(RemoteError::Republished {
                    url: store.url().to_owned(),
                    detail: format!(
                        "{DATASET} lists segment {}, the store is {id}: add it to the dataset again",
                        entry.segment_id
                    ),
                }
                .into());
            }
            for key in store.keys()? {
                if let Some(&first) = owner.get(&key) {
                    return Err(RemoteError::DuplicateKey {
                        url: client.url().to_owned(),
                        key,
                        first: manifest.stores[first].store.clone(),
                        second: entry.store.clone(),
                    }
                    .into());
                }
                owner.insert(key.clone(), i);
                keys.push(key);
            }
            stores.push(store);
        }
        keys.sort_unstable();
        Ok(Dataset {
            inner: Arc::new(DatasetInner {
                url: client.url().to_owned(),
                manifest,
                stores,
                keys,
                owner,
            }),
        })
    }

    /// The dataset's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Its manifest as read at open.
    #[must_use]
    pub fn manifest(&self) -> &DatasetManifest {
        &self.inner.manifest
    }

    /// Its stores, in manifest order.
    #[must_use]
    pub fn stores(&self) -> &[RemoteStore] {
        &self.inner.stores
    }

    /// Every key of every store, sorted.
    #[must_use]
    pub fn keys(&self) -> &[String] {
        &self.inner.keys
    }

    /// The value under `key`, from the store that holds it.
    ///
    /// # Errors
    ///
    /// As [`RemoteStore::get`].
    pub fn get(&self, key: &str) -> Result<Option<RemoteValue>> {
        match self.inner.owner.get(key) {
            Some(&i) => self.inner.stores[i].get(key),
            None => Ok(None),
        }
    }

    /// Requests sent so far by all its stores.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.inner
            .stores
            .iter()
            .map(RemoteStore::requests)
            .max()
            .unwrap_or(0)
    }
}
