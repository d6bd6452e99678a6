//! Shards of samples to record bytes and back, as Python squirrel's `MessagepackSerializer` does.
//!
//! A shard's **payload** is its samples, each packed as one MessagePack value and concatenated with
//! no count and no framing, exactly what squirrel writes (inside gzip) to `KEY.gz`. A record in the
//! engine stores that payload under a one-byte [`Codec`]: as it is, or as one zstd frame.
//!
//! Two ways to read and write samples:
//!
//! * **typed**: any `T: Serialize` / `Deserialize` through rmp-serde, structs as maps with field
//!   names (as Python dicts are). [`NdArray`](crate::array::NdArray) serializes to msgpack-numpy's
//!   map, so `#[derive(Serialize, Deserialize)] struct Sample { image: NdArray, label: i64 }`
//!   reads and writes what Python squirrel does;
//! * **byte-exact**: [`Value`], which re-encodes any sample to the identical bytes (see
//!   [`crate::value`]). Re-compressing a Python shard goes through this path, or copies the payload
//!   untouched.
//!
//! Decoding treats every byte as untrusted: a zstd frame may not decompress to more than a
//! configured limit (checked against the frame header before anything is allocated), a length field
//! may not claim more than the input holds, and nesting is limited.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Read};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::engine::platform;
use crate::shard::value::{DecodeError, EncodeError, Value, validate_value, value_len};

/// How a record's value is stored: the byte the engine keeps beside each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Plain bytes, from the engine's raw API; not samples.
    Raw = 0,
    /// Concatenated MessagePack samples, uncompressed.
    Msgpack = 1,
    /// Concatenated MessagePack samples, as one zstd frame.
    MsgpackZstd = 2,
}

impl Codec {
    /// The codec a stored byte names, if any.
    #[must_use]
    pub fn from_u8(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Msgpack),
            2 => Some(Codec::MsgpackZstd),
            _ => None,
        }
    }

    /// The byte stored for this codec.
    #[must_use]
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for Codec {
    type Error = ShardError;

    fn try_from(byte: u8) -> Result<Codec, ShardError> {
        Codec::from_u8(byte).ok_or(ShardError::UnknownCodec(byte))
    }
}

/// What was wrong with a shard's bytes, or with samples to be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// The record's codec byte names no codec this build knows (written by a newer version, or
    /// corrupt).
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    /// The record holds raw bytes ([`Codec::Raw`]), not samples.
    #[error("record holds raw bytes, not samples")]
    NotSamples,
    /// The zstd frame is truncated or corrupt.
    #[error("corrupt or truncated zstd frame: {0}")]
    Decompress(#[source] io::Error),
    /// The payload would decompress to more bytes than allowed.
    #[error("shard decompresses to {size} bytes{}; the limit is {limit}", if *.at_least { " or more" } else { "" })]
    TooLarge {
        /// The size the frame header claims, or the limit plus one when it claims none.
        size: u64,
        /// Whether `size` is only a lower bound (the frame did not say its size).
        at_least: bool,
        /// The configured limit.
        limit: u64,
    },
    /// zstd could not compress the payload.
    #[error("zstd compression failed: {0}")]
    Compress(#[source] io::Error),
    /// A sample is not valid MessagePack: truncated (also trailing bytes that start a value but do
    /// not finish it), a reserved marker, nesting too deep, a str that is not UTF-8.
    #[error("sample {sample} (payload byte {offset}): {source}")]
    Msgpack {
        /// Index of the sample in the shard.
        sample: usize,
        /// Where the sample starts in the payload.
        offset: usize,
        /// What was wrong; offsets in it count from the sample's start.
        #[source]
        source: DecodeError,
    },
    /// A sample is valid MessagePack but does not fit the requested type (including an `NdArray`
    /// whose data length does not match its dtype and shape).
    #[error("sample {sample} does not fit the requested type: {source}")]
    Mismatch {
        /// Index of the sample in the shard.
        sample: usize,
        /// rmp-serde's account of it.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A typed sample could not be serialized.
    #[error("sample {sample} could not be serialized: {source}")]
    Encode {
        /// Index of the sample in the shard.
        sample: usize,
        /// rmp-serde's account of it.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A [`Value`] sample could not be encoded (an item longer than MessagePack allows).
    #[error("sample {sample} could not be encoded: {source}")]
    EncodeValue {
        /// Index of the sample in the shard.
        sample: usize,
        /// What was wrong.
        #[source]
        source: EncodeError,
    },
}

/// A shard encoded for the engine: the record bytes and the [`Codec`] they were stored under.
///
/// The codec is chosen per shard (see [`MessagepackSerializer`]'s adaptive compression), so it
/// travels with the bytes: the engine stores it beside the record, and readers decode by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The codec of [`Encoded::bytes`]: [`Codec::Msgpack`] or [`Codec::MsgpackZstd`] for a
    /// [`MessagepackSerializer`].
    pub codec: Codec,
    /// The record bytes to store.
    pub bytes: Vec<u8>,
}

/// Turns shards of samples into record bytes and back.
///
/// Encoding returns an [`Encoded`]: the record bytes together with the codec chosen for that
/// shard, which may differ from shard to shard. Decoding takes the codec the record was stored
/// under.
///
/// Generic methods make this a compile-time interface, not a trait object; the store is generic
/// over it.
pub trait Serializer: Send + Sync {
    /// Stores an already-concatenated payload (e.g. the gunzipped content of a squirrel `KEY.gz`)
    /// as record bytes, without touching the samples, choosing the codec.
    ///
    /// # Errors
    ///
    /// [`ShardError::Compress`] when compression fails.
    fn encode_payload(&self, payload: &[u8]) -> Result<Encoded, ShardError>;

    /// As [`Serializer::encode_payload`], for a payload the caller no longer needs: an
    /// implementation may keep it as the record without copying. By default it is borrowed.
    ///
    /// # Errors
    ///
    /// As [`Serializer::encode_payload`].
    fn encode_payload_owned(&self, payload: Vec<u8>) -> Result<Encoded, ShardError> {
        self.encode_payload(&payload)
    }

    /// Serializes typed samples (structs as maps with field names) into record bytes.
    ///
    /// # Errors
    ///
    /// [`ShardError::Encode`] when a sample cannot be serialized; [`ShardError::Compress`].
    fn encode<T: Serialize>(&self, samples: &[T]) -> Result<Encoded, ShardError> {
        self.encode_payload_owned(payload_from_samples(samples)?)
    }

    /// Encodes [`Value`] samples byte-exactly into record bytes.
    ///
    /// # Errors
    ///
    /// [`ShardError::EncodeValue`]; [`ShardError::Compress`].
    fn encode_values(&self, samples: &[Value]) -> Result<Encoded, ShardError> {
        self.encode_payload_owned(encode_values(samples)?)
    }

    /// The concatenated samples in a record: borrowed when stored uncompressed.
    ///
    /// # Errors
    ///
    /// [`ShardError::NotSamples`] for [`Codec::Raw`]; [`ShardError::Decompress`] and
    /// [`ShardError::TooLarge`] for a bad zstd frame.
    fn decode_payload<'a>(
        &self,
        codec: Codec,
        bytes: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, ShardError>;

    /// As [`Serializer::decode_payload`], for a caller that reuses buffers: a payload that must
    /// be decompressed is written into `buf` (replacing what it held) and `Ok(None)` returned;
    /// one stored as it is comes back borrowed, `Ok(Some(bytes))`, and `buf` is left alone. By
    /// default it calls [`Serializer::decode_payload`] and moves an owned result into `buf`.
    ///
    /// # Errors
    ///
    /// As [`Serializer::decode_payload`].
    fn decode_payload_into<'a>(
        &self,
        codec: Codec,
        bytes: &'a [u8],
        buf: &mut Vec<u8>,
    ) -> Result<Option<&'a [u8]>, ShardError> {
        match self.decode_payload(codec, bytes)? {
            Cow::Borrowed(b) => Ok(Some(b)),
            Cow::Owned(v) => {
                *buf = v;
                Ok(None)
            }
        }
    }

    /// All samples of a record, typed.
    ///
    /// # Errors
    ///
    /// As [`Serializer::decode_payload`], then [`ShardError::Msgpack`] or
    /// [`ShardError::Mismatch`] for the first sample that fails.
    fn decode<T: DeserializeOwned>(
        &self,
        codec: Codec,
        bytes: &[u8],
    ) -> Result<Vec<T>, ShardError> {
        let payload = self.decode_payload(codec, bytes)?;
        collect_samples(&payload)
    }

    /// All samples of a record as [`Value`]s, which re-encode byte-exactly.
    ///
    /// # Errors
    ///
    /// As [`Serializer::decode_payload`], then [`ShardError::Msgpack`].
    fn decode_values(&self, codec: Codec, bytes: &[u8]) -> Result<Vec<Value>, ShardError> {
        decode_values(&self.decode_payload(codec, bytes)?)
    }
}

/// When a [`MessagepackSerializer`] compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    /// Per shard: zstd at `level`, kept only when it saves at least `min_saving` (in basis points,
    /// 1/10000) of the payload; `sample` judges a sample first.
    Adaptive {
        level: i32,
        min_saving: u16,
        sample: bool,
    },
    /// Always zstd at this level.
    Always(i32),
    /// Never compressed.
    Never,
}

/// Python squirrel's `MessagepackSerializer`, with zstd in place of gzip, compressing only where
/// it pays.
///
/// Three policies:
///
/// * **adaptive** (the default): each shard is compressed with zstd (level 3) and the frame kept
///   only when it saves at least a fraction of the payload ([`MessagepackSerializer::min_saving`],
///   by default [`MessagepackSerializer::DEFAULT_MIN_SAVING`]); otherwise the payload is stored
///   as it is ([`Codec::Msgpack`]). A payload of at least [`MessagepackSerializer::SAMPLE_MIN_LEN`]
///   bytes is first judged from a few slices spread over it, compressed at a fast level, so an
///   incompressible shard (random floats, already-compressed JPEG bytes) costs a small fraction of
///   a full compression;
/// * **always** zstd at a level ([`MessagepackSerializer::level`]), as every shard was stored
///   before adaptive compression;
/// * **never** ([`MessagepackSerializer::uncompressed`]).
///
/// Readers need no configuration for any of them: each record's codec byte says how it was
/// stored.
///
/// ```
/// use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer};
///
/// let ser = MessagepackSerializer::default();
/// let repetitive = vec![7u8; 1 << 20];
/// assert_eq!(ser.encode_payload(&repetitive)?.codec, Codec::MsgpackZstd);
/// let noise: Vec<u8> = (0..1u32 << 18).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
/// assert_eq!(ser.encode_payload(&noise)?.codec, Codec::Msgpack);
/// # Ok::<(), squirrel_store::serializer::ShardError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagepackSerializer {
    compression: Compression,
    /// Largest payload a record may decompress to.
    max_decompressed: u64,
}

impl Default for MessagepackSerializer {
    /// Adaptive: zstd level 3 where it saves at least 20%, sampled first; a 1 GiB decompression
    /// limit.
    fn default() -> Self {
        MessagepackSerializer {
            compression: Compression::Adaptive {
                level: Self::DEFAULT_LEVEL,
                min_saving: fraction_to_bp(Self::DEFAULT_MIN_SAVING),
                sample: true,
            },
            max_decompressed: Self::DEFAULT_MAX_DECOMPRESSED,
        }
    }
}

/// A fraction in basis points, clamped to 0..=1 (NaN counts as 0).
fn fraction_to_bp(fraction: f64) -> u16 {
    let f = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    // In 0..=10000 after the clamp, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bp = (f * 10_000.0).round() as u16;
    bp
}

/// Slices of this many bytes make up the sample the adaptive policy judges first.
const SAMPLE_SLICE: usize = 16 << 10;
/// How many slices, spread evenly over the payload.
const SAMPLE_SLICES: usize = 4;
/// The zstd level the sample is compressed at: fast, and close enough to level 3's ratio to judge.
const SAMPLE_LEVEL: i32 = 1;

impl MessagepackSerializer {
    /// The zstd level of [`MessagepackSerializer::default`], for shards where compression pays.
    pub const DEFAULT_LEVEL: i32 = 3;
    /// The decompression limit of [`MessagepackSerializer::default`]: 1 GiB.
    ///
    /// A shard is meant to be read whole into memory, so one larger than this is almost surely a
    /// decompression bomb (2 KB of zstd can claim 64 MiB of zeros); raise it with
    /// [`MessagepackSerializer::max_decompressed`] for larger legitimate shards.
    pub const DEFAULT_MAX_DECOMPRESSED: u64 = 1 << 30;

    /// The least saving (a fraction of the payload) for which the default keeps a shard
    /// compressed: 20%.
    ///
    /// Below that, zstd costs more than it saves for a memory-mapped local store: random float32
    /// image data saves about 11% at level 3, and costs about 7× on write and 5× on a random shard
    /// get against storing it as it is.
    pub const DEFAULT_MIN_SAVING: f64 = 0.2;
    /// Payloads at least this long are judged from a sample before being compressed whole by the
    /// adaptive policy; shorter ones are simply compressed and measured.
    pub const SAMPLE_MIN_LEN: usize = 4 * SAMPLE_SLICE * SAMPLE_SLICES;

    /// The default serializer: adaptive zstd level 3, 1 GiB limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Always compresses with zstd at `level` (1..=22; negative levels are faster still), whatever
    /// the saving.
    #[must_use]
    pub fn level(mut self, level: i32) -> Self {
        self.compression = Compression::Always(level);
        self
    }

    /// Compresses each shard and keeps the frame only when it saves at least `fraction` of the
    /// payload (clamped to 0..=1; 0 keeps any frame not larger than the payload), else stores the
    /// payload uncompressed. Keeps the level set before (`.level(9).min_saving(0.2)` is adaptive
    /// at level 9), or [`MessagepackSerializer::DEFAULT_LEVEL`] after
    /// [`MessagepackSerializer::uncompressed`].
    #[must_use]
    pub fn min_saving(mut self, fraction: f64) -> Self {
        let (level, sample) = match self.compression {
            Compression::Adaptive { level, sample, .. } => (level, sample),
            Compression::Always(level) => (level, true),
            Compression::Never => (Self::DEFAULT_LEVEL, true),
        };
        self.compression = Compression::Adaptive {
            level,
            min_saving: fraction_to_bp(fraction),
            sample,
        };
        self
    }

    /// Whether the adaptive policy judges a sample of a long payload before compressing it whole
    /// (on by default). Off, every shard is compressed whole and measured: slower on
    /// incompressible data, never fooled by a sample. No effect on the other policies.
    #[must_use]
    pub fn sampling(mut self, on: bool) -> Self {
        if let Compression::Adaptive { sample, .. } = &mut self.compression {
            *sample = on;
        }
        self
    }

    /// Stores payloads uncompressed.
    #[must_use]
    pub fn uncompressed(mut self) -> Self {
        self.compression = Compression::Never;
        self
    }

    /// Refuses records that decompress to more than `bytes`.
    #[must_use]
    pub fn max_decompressed(mut self, bytes: u64) -> Self {
        self.max_decompressed = bytes;
        self
    }

    /// The zstd level shards are compressed at (always, or where it pays), or `None` when payloads
    /// are stored uncompressed.
    #[must_use]
    pub fn compression_level(&self) -> Option<i32> {
        match self.compression {
            Compression::Adaptive { level, .. } | Compression::Always(level) => Some(level),
            Compression::Never => None,
        }
    }

    /// The least saving for which a shard is kept compressed, when the policy is adaptive;
    /// `None` when it always or never compresses.
    #[must_use]
    pub fn min_saving_fraction(&self) -> Option<f64> {
        match self.compression {
            Compression::Adaptive { min_saving, .. } => Some(f64::from(min_saving) / 10_000.0),
            _ => None,
        }
    }

    /// The decompression limit in bytes.
    #[must_use]
    pub fn decompressed_limit(&self) -> u64 {
        self.max_decompressed
    }

    /// The zstd frame to store for `payload`, or `None` to store it uncompressed.
    fn frame(&self, payload: &[u8]) -> Result<Option<Vec<u8>>, ShardError> {
        match self.compression {
            // bulk compression writes the content size into the frame header, which lets the
            // reader allocate once and check the limit up front.
            Compression::Always(level) => compress(payload, level).map(Some),
            Compression::Adaptive {
                level,
                min_saving,
                sample,
            } => Self::adaptive(payload, level, min_saving, sample),
            Compression::Never => Ok(None),
        }
    }

    /// The adaptive choice for `payload`: the zstd frame when it is worth keeping, else `None`.
    fn adaptive(
        payload: &[u8],
        level: i32,
        min_saving: u16,
        sample: bool,
    ) -> Result<Option<Vec<u8>>, ShardError> {
        if payload.is_empty() {
            return Ok(None);
        }
        // `kept <= len * (1 - saving)`, in integers: `kept * 10000 <= len * (10000 - bp)`.
        let pays = |len: usize, kept: usize| {
            (kept as u128) * 10_000 <= (len as u128) * u128::from(10_000 - min_saving.min(10_000))
        };
        if sample && payload.len() >= Self::SAMPLE_MIN_LEN {
            let stride = (payload.len() - SAMPLE_SLICE) / (SAMPLE_SLICES - 1);
            let (mut raw, mut kept) = (0usize, 0usize);
            for i in 0..SAMPLE_SLICES {
                let Some(slice) = payload.get(i * stride..i * stride + SAMPLE_SLICE) else {
                    continue;
                };
                raw += slice.len();
                kept += compress(slice, SAMPLE_LEVEL)?.len();
            }
            // The sample, at its fast level, gains a little less than the whole payload at the
            // real level would: it refuses only when it falls clearly short of the bar, at less
            // than 4/5 of the saving asked for.
            let short = (kept as u128) * 10_000 * 5
                > (raw as u128) * (5 * 10_000 - 4 * u128::from(min_saving.min(10_000)));
            if short {
                return Ok(None);
            }
        }
        let frame = compress(payload, level)?;
        Ok(pays(payload.len(), frame.len()).then_some(frame))
    }
}

impl Serializer for MessagepackSerializer {
    fn encode_payload(&self, payload: &[u8]) -> Result<Encoded, ShardError> {
        Ok(match self.frame(payload)? {
            Some(bytes) => Encoded {
                codec: Codec::MsgpackZstd,
                bytes,
            },
            None => Encoded {
                codec: Codec::Msgpack,
                bytes: payload.to_vec(),
            },
        })
    }

    fn encode_payload_owned(&self, payload: Vec<u8>) -> Result<Encoded, ShardError> {
        Ok(match self.frame(&payload)? {
            Some(bytes) => Encoded {
                codec: Codec::MsgpackZstd,
                bytes,
            },
            None => Encoded {
                codec: Codec::Msgpack,
                bytes: payload,
            },
        })
    }

    fn decode_payload<'a>(
        &self,
        codec: Codec,
        bytes: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, ShardError> {
        match codec {
            Codec::Raw => Err(ShardError::NotSamples),
            Codec::Msgpack => Ok(Cow::Borrowed(bytes)),
            Codec::MsgpackZstd => decompress(bytes, self.max_decompressed).map(Cow::Owned),
        }
    }

    fn decode_payload_into<'a>(
        &self,
        codec: Codec,
        bytes: &'a [u8],
        buf: &mut Vec<u8>,
    ) -> Result<Option<&'a [u8]>, ShardError> {
        match codec {
            Codec::Raw => Err(ShardError::NotSamples),
            Codec::Msgpack => Ok(Some(bytes)),
            Codec::MsgpackZstd => {
                decompress_into(bytes, self.max_decompressed, buf)?;
                Ok(None)
            }
        }
    }
}

impl MessagepackSerializer {
    /// The payload of a record as a stream, never holding more than one chunk of it: the record's
    /// bytes for [`Codec::Msgpack`], decompressed as read for [`Codec::MsgpackZstd`]. The
    /// decompression limit holds as for [`Serializer::decode_payload`].
    ///
    /// # Errors
    ///
    /// [`ShardError::NotSamples`] for [`Codec::Raw`]; [`ShardError::TooLarge`] when the frame
    /// header claims more than the limit; [`ShardError::Decompress`] for a frame that does not
    /// start.
    pub fn payload_reader<'a>(
        &self,
        codec: Codec,
        bytes: &'a [u8],
    ) -> Result<PayloadReader<'a>, ShardError> {
        let limit = self.max_decompressed;
        let (inner, claimed) = match codec {
            Codec::Raw => return Err(ShardError::NotSamples),
            Codec::Msgpack => {
                let len = bytes.len() as u64;
                if len > limit {
                    return Err(ShardError::TooLarge {
                        size: len,
                        at_least: false,
                        limit,
                    });
                }
                (PayloadInner::Plain(bytes), Some(len))
            }
            Codec::MsgpackZstd => {
                let claimed = frame_size(bytes, limit)?;
                let decoder = zstd::stream::read::Decoder::with_buffer(bytes)
                    .map_err(ShardError::Decompress)?;
                (PayloadInner::Zstd(Box::new(decoder)), claimed)
            }
        };
        Ok(PayloadReader {
            inner,
            limit,
            claimed,
            read: 0,
            done: false,
        })
    }
}

/// What a [`PayloadReader`] reads from.
enum PayloadInner<'a> {
    Plain(&'a [u8]),
    Zstd(Box<zstd::stream::read::Decoder<'a, &'a [u8]>>),
}

/// A record's payload read as a stream; see [`MessagepackSerializer::payload_reader`].
///
/// [`PayloadReader::read_chunk`] gives typed errors; the [`Read`] implementation wraps the same
/// errors in [`io::Error`] (recover them with [`ShardError::from_io`]).
pub struct PayloadReader<'a> {
    inner: PayloadInner<'a>,
    limit: u64,
    claimed: Option<u64>,
    read: u64,
    done: bool,
}

impl std::fmt::Debug for PayloadReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadReader")
            .field("limit", &self.limit)
            .field("claimed", &self.claimed)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl PayloadReader<'_> {
    /// Reads the next bytes of the payload into `buf`; 0 at the end.
    ///
    /// # Errors
    ///
    /// [`ShardError::TooLarge`] as soon as the payload passes the limit (what was read past it is
    /// not handed out); [`ShardError::Decompress`] for a corrupt frame or one whose content is not
    /// the size its header states.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, ShardError> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = match &mut self.inner {
            PayloadInner::Plain(rest) => {
                let n = rest.len().min(buf.len());
                let (head, tail) = rest.split_at(n);
                buf[..n].copy_from_slice(head);
                *rest = tail;
                n
            }
            PayloadInner::Zstd(decoder) => loop {
                match decoder.read(buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ShardError::Decompress(e)),
                }
            },
        };
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            self.done = true;
            return Err(ShardError::TooLarge {
                size: self.read,
                at_least: true,
                limit: self.limit,
            });
        }
        if n == 0 {
            self.done = true;
            if self.claimed.is_some_and(|c| c != self.read) {
                return Err(corrupt_frame(
                    "frame content size does not match the decoded bytes",
                ));
            }
        }
        Ok(n)
    }

    /// Payload bytes read so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(io::Error::other)
    }
}

impl ShardError {
    /// The [`ShardError`] inside an [`io::Error`] made by a [`PayloadReader`]'s [`Read`]
    /// implementation; any other I/O error becomes [`ShardError::Decompress`].
    #[must_use]
    pub fn from_io(e: io::Error) -> ShardError {
        if e.get_ref().is_some_and(|inner| inner.is::<ShardError>()) {
            match e.into_inner().map(|inner| inner.downcast::<ShardError>()) {
                Some(Ok(shard)) => return *shard,
                Some(Err(other)) => return ShardError::Decompress(io::Error::other(other)),
                None => {}
            }
            return ShardError::Decompress(io::Error::other("unreadable payload"));
        }
        ShardError::Decompress(e)
    }
}

fn corrupt_frame(what: &str) -> ShardError {
    ShardError::Decompress(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

/// The decompressed size a zstd frame's header states, if it states one; an error for input that
/// starts no frame, or whose stated size is over `limit`.
fn frame_size(bytes: &[u8], limit: u64) -> Result<Option<u64>, ShardError> {
    if bytes.is_empty() {
        return Err(corrupt_frame("empty input"));
    }
    let claimed = zstd::zstd_safe::get_frame_content_size(bytes)
        .map_err(|_| corrupt_frame("no valid zstd frame header"))?;
    if let Some(size) = claimed.filter(|s| *s > limit) {
        return Err(ShardError::TooLarge {
            size,
            at_least: false,
            limit,
        });
    }
    Ok(claimed)
}

/// Levels up to this one keep their compression context per thread; higher ones (whose contexts
/// take tens of MB) make a fresh one per shard.
const CACHED_LEVELS: i32 = 9;

thread_local! {
    /// This thread's zstd contexts: making one per shard cost a large allocation (and its page
    /// faults) each time, a few percent of a get and more of a write.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// One zstd frame of `data` at `level`, with its content size in the header.
fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, ShardError> {
    if level > CACHED_LEVELS {
        return zstd::bulk::compress(data, level).map_err(ShardError::Compress);
    }
    COMPRESSOR
        .with(|cell| {
            // A context in use further up this thread's stack cannot be lent: use a fresh one.
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return zstd::bulk::compress(data, level);
            };
            let compressor = match slot.as_mut() {
                Some(c) => {
                    c.set_compression_level(level)?;
                    c
                }
                None => slot.insert(zstd::bulk::Compressor::new(level)?),
            };
            compressor.compress(data)
        })
        .map_err(ShardError::Compress)
}

/// Runs `f` with this thread's decompression context (a fresh one if it is in use).
fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> io::Result<R>,
) -> io::Result<R> {
    DECOMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return f(&mut zstd::bulk::Decompressor::new()?);
        };
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        f(decompressor)
    })
}

/// Decompresses zstd frames into at most `limit` bytes.
fn decompress(bytes: &[u8], limit: u64) -> Result<Vec<u8>, ShardError> {
    let mut out = Vec::new();
    decompress_into(bytes, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out`, which is cleared first and keeps its capacity for reuse.
fn decompress_into(bytes: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<(), ShardError> {
    out.clear();

    let claimed = frame_size(bytes, limit)?;
    // The claim sizes the buffer only up to what the input can plausibly produce (zstd rarely
    // beats 1000:1 on real data); past that the buffer grows as bytes actually arrive, so a
    // 12-byte frame claiming 4 GiB gets no 4 GiB allocation.
    let plausible = (bytes.len() as u64).saturating_mul(1024).max(1 << 20);
    if let Some(size) = claimed.filter(|s| *s <= plausible)
        && let Ok(size) = usize::try_from(size)
    {
        // The size is known and plausible: decompress straight into a buffer of that size, with
        // no zero-filling and no copy out of a stream's window. A frame that does not fit (it
        // lied, or more frames follow) is refused as a stream would refuse it below.
        out.reserve(size);
        with_decompressor(|d| d.decompress_to_buffer(bytes, out))
            .map_err(ShardError::Decompress)?;
        if out.len() != size {
            return Err(corrupt_frame(
                "frame content size does not match the decoded bytes",
            ));
        }
        return Ok(());
    }
    let capacity = usize::try_from(claimed.unwrap_or(0).min(plausible)).unwrap_or(0);
    out.reserve(capacity);
    let decoder =
        zstd::stream::read::Decoder::with_buffer(bytes).map_err(ShardError::Decompress)?;
    // Reading one byte past the limit tells "exactly at the limit" from "over it" without ever
    // holding more than limit + 1 bytes.
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(out)
        .map_err(ShardError::Decompress)?;
    if out.len() as u64 > limit {
        return Err(ShardError::TooLarge {
            size: limit.saturating_add(1),
            at_least: true,
            limit,
        });
    }
    if claimed.is_some_and(|c| c != out.len() as u64) {
        return Err(corrupt_frame(
            "frame content size does not match the decoded bytes",
        ));
    }
    Ok(())
}

/// The payload for typed samples: each written with rmp-serde, structs as maps with field names.
///
/// # Errors
///
/// [`ShardError::Encode`] when a sample cannot be serialized.
pub fn payload_from_samples<T: Serialize>(samples: &[T]) -> Result<Vec<u8>, ShardError> {
    // A first pass sizes the buffer exactly: it walks the samples' structure but copies nothing
    // (a bin's bytes are only counted), so the bytes are copied once, into a buffer that never
    // grows. Growing by doubling instead copied a 1 MB shard about twice more.
    let mut size = ByteCount(0);
    for (sample, s) in samples.iter().enumerate() {
        rmp_serde::encode::write_named(&mut size, s)
            .map_err(|source| ShardError::Encode { sample, source })?;
    }
    let mut out = Vec::with_capacity(size.0);
    for (sample, s) in samples.iter().enumerate() {
        rmp_serde::encode::write_named(&mut out, s)
            .map_err(|source| ShardError::Encode { sample, source })?;
    }
    Ok(out)
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The payload for [`Value`] samples, byte-exact.
///
/// # Errors
///
/// [`ShardError::EncodeValue`] when an item is longer than MessagePack allows.
pub fn encode_values(samples: &[Value]) -> Result<Vec<u8>, ShardError> {
    let mut out = Vec::new();
    for (sample, v) in samples.iter().enumerate() {
        v.encode(&mut out)
            .map_err(|source| ShardError::EncodeValue { sample, source })?;
    }
    Ok(out)
}

/// Every sample in a payload as a [`Value`].
///
/// # Errors
///
/// [`ShardError::Msgpack`] for the first sample that is not valid MessagePack.
pub fn decode_values(payload: &[u8]) -> Result<Vec<Value>, ShardError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(rest) = payload.get(offset..).filter(|r| !r.is_empty()) {
        let (v, used) = Value::decode(rest).map_err(|source| ShardError::Msgpack {
            sample: out.len(),
            offset,
            source,
        })?;
        out.push(v);
        offset += used;
    }
    Ok(out)
}

/// [`decode_values`] with bins sharing `owner` (which holds `payload`) instead of copying.
pub(crate) fn decode_values_in(
    owner: &crate::shard::store::Payload,
    payload: &[u8],
) -> Result<Vec<Value>, ShardError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(rest) = payload.get(offset..).filter(|r| !r.is_empty()) {
        let (v, used) = Value::decode_in(owner, rest).map_err(|source| ShardError::Msgpack {
            sample: out.len(),
            offset,
            source,
        })?;
        prefetch_next_sample(rest, used);
        out.push(v);
        offset += used;
    }
    Ok(out)
}

/// The first `n` samples of a payload as [`Value`]s (fewer when it holds fewer); the rest is not
/// read.
///
/// # Errors
///
/// [`ShardError::Msgpack`] for the first of them that is not valid MessagePack.
pub fn decode_values_up_to(payload: &[u8], n: usize) -> Result<Vec<Value>, ShardError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while out.len() < n
        && let Some(rest) = payload.get(offset..).filter(|r| !r.is_empty())
    {
        let (v, used) = Value::decode(rest).map_err(|source| ShardError::Msgpack {
            sample: out.len(),
            offset,
            source,
        })?;
        out.push(v);
        offset += used;
    }
    Ok(out)
}

/// The number of samples in a payload, each checked as [`Value::decode`] checks it (structure,
/// depth, UTF-8) without building it: memory stays bounded however many samples there are.
///
/// # Errors
///
/// [`ShardError::Msgpack`] for the first sample that is not complete, valid MessagePack.
pub fn count_samples(payload: &[u8]) -> Result<u64, ShardError> {
    let mut counter = SampleCounter::new();
    counter.feed(payload)?;
    counter.finish()
}

/// Counts and checks the samples of a payload that arrives in chunks (a gzip or zstd stream),
/// keeping only the unfinished last sample between chunks. Each sample is checked as
/// [`count_samples`] checks it.
#[derive(Debug, Default, Clone)]
pub struct SampleCounter {
    /// Bytes of the sample that started but did not finish in the chunks so far.
    pending: Vec<u8>,
    /// Payload offset of `pending`'s first byte.
    offset: u64,
    samples: u64,
    /// `pending` is walked again only once it reaches this length: a large sample arriving in
    /// small chunks is re-walked a logarithmic number of times, not once per chunk.
    retry_at: usize,
}

impl SampleCounter {
    /// A counter at the start of a payload.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples completed so far.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Takes the next bytes of the payload.
    ///
    /// # Errors
    ///
    /// [`ShardError::Msgpack`] for a sample that is invalid (not merely unfinished).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ShardError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.pending.is_empty() {
            let used = self.walk(chunk, false)?;
            self.pending.extend_from_slice(&chunk[used..]);
            self.retry_at = self.pending.len().saturating_mul(2);
            return Ok(());
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() < self.retry_at {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let used = self.walk(&pending, false)?;
        self.pending = pending;
        self.pending.drain(..used);
        self.retry_at = self.pending.len().saturating_mul(2);
        Ok(())
    }

    /// Ends the payload; returns the number of samples.
    ///
    /// # Errors
    ///
    /// [`ShardError::Msgpack`] when the payload ends inside a sample, or a sample is invalid.
    pub fn finish(mut self) -> Result<u64, ShardError> {
        let pending = std::mem::take(&mut self.pending);
        self.walk(&pending, true)?;
        Ok(self.samples)
    }

    /// Counts the whole samples at the start of `bytes` (which start at `self.offset`); returns
    /// the bytes they take. An unfinished last sample is an error only when `last`.
    fn walk(&mut self, bytes: &[u8], last: bool) -> Result<usize, ShardError> {
        let mut pos = 0;
        while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
            match validate_value(rest) {
                Ok(len) => {
                    pos += len;
                    self.samples += 1;
                }
                Err(DecodeError::Truncated { .. }) if !last => break,
                Err(source) => {
                    return Err(ShardError::Msgpack {
                        sample: usize::try_from(self.samples).unwrap_or(usize::MAX),
                        offset: usize::try_from(self.offset)
                            .unwrap_or(usize::MAX)
                            .saturating_add(pos),
                        source,
                    });
                }
            }
        }
        self.offset = self.offset.saturating_add(pos as u64);
        Ok(pos)
    }
}

/// The bytes of each sample in a payload, without decoding them.
///
/// # Errors
///
/// [`ShardError::Msgpack`] for the first sample that is not complete, valid MessagePack.
pub fn split_samples(payload: &[u8]) -> Result<Vec<&[u8]>, ShardError> {
    SampleBytes::new(payload).collect()
}

/// An iterator over the bytes of each sample in a payload; stops after the first error.
#[derive(Debug, Clone)]
pub struct SampleBytes<'a> {
    payload: &'a [u8],
    offset: usize,
    index: usize,
    failed: bool,
}

impl<'a> SampleBytes<'a> {
    /// Iterates over the samples of `payload`.
    #[must_use]
    pub fn new(payload: &'a [u8]) -> Self {
        SampleBytes {
            payload,
            offset: 0,
            index: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for SampleBytes<'a> {
    type Item = Result<&'a [u8], ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.payload.get(self.offset..).filter(|r| !r.is_empty())?;
        match value_len(rest) {
            Ok(len) => {
                self.offset += len;
                self.index += 1;
                prefetch_next_sample(rest, len);
                rest.get(..len).map(Ok)
            }
            Err(source) => {
                self.failed = true;
                Some(Err(ShardError::Msgpack {
                    sample: self.index,
                    offset: self.offset,
                    source,
                }))
            }
        }
    }
}

impl std::iter::FusedIterator for SampleBytes<'_> {}

/// Asks the CPU to start loading the sample after the first `len` bytes of `rest` (one sample)
/// while that sample is decoded: its head, and its last bytes if it is as long as this one.
///
/// A sample's fields lie before and after its arrays, so with image-sized arrays each sample
/// costs two cache misses (and TLB misses) a whole array apart, where no hardware prefetcher
/// looks; a shard's samples are usually laid out alike, so the second guess is usually right.
/// Measured on the seed workload (`examples/shard_profile loop`): 18% less time per shard. A
/// wrong guess costs one wasted cache line.
#[inline]
pub(crate) fn prefetch_next_sample(rest: &[u8], len: usize) {
    if let Some(next) = rest.get(len..) {
        platform::prefetch(next);
        if let Some(tail) = next.get(len.saturating_sub(128)..) {
            platform::prefetch(tail);
        }
    }
}

/// The samples of a payload, deserialized one at a time as `T`; stops after the first error.
///
/// `T` may borrow from the payload (e.g. `#[serde(borrow)] data: &[u8]`) to avoid copying.
#[derive(Debug, Clone)]
pub struct Samples<'a, T> {
    bytes: SampleBytes<'a>,
    failed: bool,
    _t: PhantomData<fn() -> T>,
}

impl<'a, T: Deserialize<'a>> Samples<'a, T> {
    /// Iterates over the samples of `payload`.
    #[must_use]
    pub fn new(payload: &'a [u8]) -> Self {
        Samples {
            bytes: SampleBytes::new(payload),
            failed: false,
            _t: PhantomData,
        }
    }
}

impl<'a, T: Deserialize<'a>> Iterator for Samples<'a, T> {
    type Item = Result<T, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let sample = self.bytes.index;
        // The sample's extent is found first, so the depth limit and length checks of `value_len`
        // guard rmp-serde, and a sample is never read past its end.
        let item = self.bytes.next()?.and_then(|bytes| {
            rmp_serde::from_slice(bytes).map_err(|source| ShardError::Mismatch { sample, source })
        });
        self.failed = item.is_err();
        Some(item)
    }
}

impl<'a, T: Deserialize<'a>> std::iter::FusedIterator for Samples<'a, T> {}

/// Most samples a shard's `Vec` is sized for up front, whatever the estimate.
const PRESIZE_LIMIT: usize = 1 << 16;

/// Every sample of `payload`, into a `Vec` sized from the first sample's length (see
/// [`extend_samples`]).
///
/// # Errors
///
/// As [`Samples`]: the first sample that fails.
pub(crate) fn collect_samples<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
) -> Result<Vec<T>, ShardError> {
    let mut all = Vec::new();
    extend_samples(payload, &mut all, |sample| sample)?;
    Ok(all)
}

/// Pushes every sample of `payload`, passed through `f`, onto `out`, which is first grown to fit
/// as many samples as the first one's length suggests, so that a shard of like-sized samples is
/// collected without regrowing (each regrowth moves every sample so far). The estimate is at
/// most one item per payload byte and at most [`PRESIZE_LIMIT`] items.
///
/// # Errors
///
/// As [`Samples`]: the first sample that fails. `out` then holds the samples before it.
pub(crate) fn extend_samples<'a, T: Deserialize<'a>, U>(
    payload: &'a [u8],
    out: &mut Vec<U>,
    mut f: impl FnMut(T) -> U,
) -> Result<(), ShardError> {
    let mut samples = Samples::new(payload);
    let Some(first) = samples.next() else {
        return Ok(());
    };
    let first = f(first?);
    let estimate = payload.len() / samples.bytes.offset.max(1);
    out.reserve(estimate.clamp(1, PRESIZE_LIMIT));
    out.push(first);
    for sample in samples {
        out.push(f(sample?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_samples_whatever_the_first_sample_says() -> Result<(), Box<dyn std::error::Error>> {
        // A 1-byte first sample makes the estimate one item per byte: still exact results.
        let mut payload = rmp_serde::to_vec(&0u32)?;
        for i in 1..=50u32 {
            payload.extend(rmp_serde::to_vec(&vec![i; i as usize])?);
        }
        let all = collect_samples::<Value>(&payload)?;
        assert_eq!(all.len(), 51);
        assert_eq!(all[0].as_u64(), Some(0));
        assert_eq!(all[50].as_array().map(<[Value]>::len), Some(50));
        assert!(collect_samples::<Value>(&[])?.is_empty());
        // An error after the first sample is the error of that sample.
        payload.push(0xc1);
        assert!(matches!(
            collect_samples::<Value>(&payload),
            Err(ShardError::Msgpack { sample: 51, .. })
        ));
        Ok(())
    }

    #[test]
    fn codec_bytes() {
        for c in [Codec::Raw, Codec::Msgpack, Codec::MsgpackZstd] {
            assert_eq!(Codec::from_u8(c.as_u8()), Some(c));
        }
        assert_eq!(Codec::from_u8(3), None);
        assert!(matches!(
            Codec::try_from(9),
            Err(ShardError::UnknownCodec(9))
        ));
    }

    #[test]
    fn limit_is_exact() {
        let payload = vec![7u8; 1000];
        let frame = zstd::bulk::compress(&payload, 3).expect("compresses");
        assert_eq!(decompress(&frame, 1000).expect("fits"), payload);
        assert!(matches!(
            decompress(&frame, 999),
            Err(ShardError::TooLarge { size: 1000, .. })
        ));
        // Without a content size in the header the streaming limit catches it.
        let mut streamed = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 3).expect("encoder");
        std::io::Write::write_all(&mut enc, &payload).expect("writes");
        enc.finish().expect("finishes");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).ok(),
            Some(None)
        );
        assert_eq!(decompress(&streamed, 1000).expect("fits"), payload);
        assert!(matches!(
            decompress(&streamed, 999),
            Err(ShardError::TooLarge { at_least: true, .. })
        ));
    }
}
