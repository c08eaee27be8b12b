//! Arithmetic modulo ℓ (the order of ed25519's prime subgroup) for signatures made by hand:
//! the strict-signature edge cases of docs/PROTOCOL.md §4.5. Shared by the unit tests of
//! proto/src/address.rs and the test vectors (proto/tests/vectors.rs).
#![allow(dead_code)] // each of the two users takes what it needs

/// ℓ, the order of the prime subgroup, as little-endian 64-bit limbs.
pub(crate) const ELL: [u64; 4] = [
    0x5812_631a_5cf5_d3ed,
    0x14de_f9de_a2f7_9cd6,
    0,
    0x1000_0000_0000_0000,
];

pub(crate) fn ge(a: &[u64; 4], b: &[u64; 4]) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

pub(crate) fn sub(a: &mut [u64; 4], b: &[u64; 4]) {
    let mut borrow = 0u64;
    for i in 0..4 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(borrow);
        a[i] = d;
        borrow = u64::from(b1 || b2);
    }
}

/// 2a + bit mod ℓ, for a < ℓ.
pub(crate) fn double_add(a: &mut [u64; 4], bit: u64) {
    let mut carry = bit;
    for limb in a.iter_mut() {
        let next = *limb >> 63;
        *limb = (*limb << 1) | carry;
        carry = next;
    }
    if ge(a, &ELL) {
        sub(a, &ELL);
    }
}

/// A little-endian integer of any length, reduced mod ℓ.
pub(crate) fn reduce(bytes: &[u8]) -> [u64; 4] {
    let mut r = [0u64; 4];
    for byte in bytes.iter().rev() {
        for bit in (0..8).rev() {
            double_add(&mut r, u64::from((byte >> bit) & 1));
        }
    }
    r
}

/// a·b mod ℓ.
pub(crate) fn mul(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    let mut r = [0u64; 4];
    for i in (0..256).rev() {
        double_add(&mut r, 0);
        if (a[i / 64] >> (i % 64)) & 1 == 1 {
            let mut carry = false;
            for j in 0..4 {
                let (s, c1) = r[j].overflowing_add(b[j]);
                let (s, c2) = s.overflowing_add(u64::from(carry));
                r[j] = s;
                carry = c1 || c2;
            }
            if ge(&r, &ELL) {
                sub(&mut r, &ELL);
            }
        }
    }
    r
}

pub(crate) fn limbs_to_bytes(a: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_mut(8).zip(a) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

pub(crate) fn sha512(parts: &[&[u8]]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA512);
    for part in parts {
        context.update(part);
    }
    context.finish().as_ref().to_vec()
}

/// A signature whose R is the identity (a point of small order) and S = k·a: the cofactorless
/// equation [S]B = R + [k]A holds, so a lax verifier accepts it; a strict one refuses the
/// small-order R.
pub(crate) fn small_order_r_signature(seed: u8, message: &[u8]) -> [u8; 64] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&sha512(&[&[seed; 32]])[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .verifying_key()
        .to_bytes();
    let mut r = [0u8; 32];
    r[0] = 1;
    let k = reduce(&sha512(&[&r, &public, message]));
    let s = mul(&k, &reduce(&a));
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r);
    signature[32..].copy_from_slice(&limbs_to_bytes(&s));
    signature
}
