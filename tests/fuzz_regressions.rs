//! Regression tests for what the fuzz targets in `fuzz/` found (issue 5).
//!
//! Each test is the minimal reproducer of one finding, written against the behaviour the crate
//! promises, and each finding's cause is fixed in the crate.

use squirrel_store::array::{ArrayError, NdArray};
use squirrel_store::serializer::Samples;
use squirrel_store::value::Value;

/// Pins: `NdArray::len` (and `is_empty`) multiplying an unchecked shape.
///
/// Found by `decode_shard` (mode 3, and through msgpack in mode 4): an array whose dtype the
/// crate keeps as opaque text (`|O`, `|O8`, anything `parse_dtype` does not know) is built without
/// any size check, so a shape whose element count overflows `usize` is accepted; `len()` then
/// panics with "attempt to multiply with overflow" (debug, or any build with overflow checks) or
/// silently wraps (release: `[1 << 32, 1 << 32]` has `len() == 0` and `is_empty()`).
#[test]
fn ndarray_len_of_opaque_dtype_with_huge_shape_does_not_overflow() {
    // Built directly.
    let built = NdArray::new("|O", vec![1 << 40, 1 << 40], Vec::new());
    assert!(
        matches!(built, Err(ArrayError::ShapeOverflow { .. })),
        "an array whose element count overflows must be refused, got {built:?}"
    );
    // Read from a sample: the msgpack-numpy map msgpack-numpy would write, with that shape.
    let map = Value::Map(vec![
        (Value::Bin(b"nd".to_vec()), Value::Bool(true)),
        (Value::Bin(b"type".to_vec()), Value::Str("|O".into())),
        (Value::Bin(b"kind".to_vec()), Value::Bin(Vec::new())),
        (
            Value::Bin(b"shape".to_vec()),
            Value::Array(vec![Value::from(1u64 << 40), Value::from(1u64 << 40)]),
        ),
        (Value::Bin(b"data".to_vec()), Value::Bin(Vec::new())),
    ]);
    assert!(
        matches!(map.to_ndarray(), Err(ArrayError::ShapeOverflow { .. })),
        "Value::to_ndarray must refuse the shape"
    );
    let payload = map.to_bytes().expect("encode");
    let decoded: Vec<_> = Samples::<NdArray>::new(&payload).collect();
    assert!(
        decoded.iter().all(Result::is_err),
        "a typed read must refuse the shape"
    );
}
