//! Random shard keys, as Python squirrel makes them when `set` is given no key.

use rand::Rng;

/// The characters of a random key: squirrel's `string.ascii_uppercase + string.digits`.
const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The length of a random key, squirrel's `get_random_key` default.
pub const RANDOM_KEY_LEN: usize = 16;

/// A fresh random key: [`RANDOM_KEY_LEN`] characters of `[A-Z0-9]`, as Python squirrel's
/// `get_random_key()` makes.
///
/// The characters come from the thread-local generator of `rand` (a CSPRNG seeded by the operating
/// system), so keys made by many threads and processes at once do not repeat in practice: with
/// 36^16 ≈ 8·10^24 possible keys, a billion shards collide with probability about 6·10^-8.
///
/// ```
/// let key = squirrel_store::random_key();
/// assert_eq!(key.len(), 16);
/// assert!(key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
/// ```
#[must_use]
pub fn random_key() -> String {
    let mut rng = rand::rng();
    (0..RANDOM_KEY_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}
