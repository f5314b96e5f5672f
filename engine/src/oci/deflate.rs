//! Raw deflate (RFC 1951) without string matching: literals and runs of one byte (matches at
//! distance 1) in dynamic Huffman blocks, as zlib's `Z_RLE` strategy writes them.
//!
//! Data where an LZ77 match finder finds almost nothing to match (random-looking text such as
//! base64, already-compressed files) still compresses by its byte statistics alone, and the
//! match finder's fruitless search is most of libdeflate's time on it (about half of level 6's,
//! by `perf`, on such a layer). This encoder skips it: one pass to parse and count, one to
//! write, several times faster than libdeflate's level 1. [`super::compress`] chooses it for a
//! block only where samples show that matching would gain almost nothing (see
//! `compress::deflate_block`).
//!
//! The output depends only on the input bytes: it is as reproducible as any other compressor.

/// Input bytes per deflate block: large enough that the Huffman tables (about 60–90 bytes)
/// cost little, small enough that the codes follow the data.
pub(super) const BLOCK_INPUT: usize = 128 * 1024;
/// Longest deflate match.
const MAX_RUN: usize = 258;
/// Shortest deflate match.
const MIN_RUN: usize = 3;
/// The end-of-block symbol.
const END_OF_BLOCK: usize = 256;
/// Literal/length alphabet size (codes 286 and 287 are never used).
const LITLEN_SYMS: usize = 286;
/// Longest code of the literal/length and distance alphabets.
const MAX_CODE_LEN: u8 = 15;
/// Longest code of the code-length alphabet.
const MAX_CODELEN_CODE_LEN: u8 = 7;
/// The order the code-length alphabet's lengths are sent in (RFC 1951 §3.2.7).
const CODELEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Raw deflate of `data`, appended to `out`. An empty input gives one empty fixed block.
pub fn deflate_rle(data: &[u8], out: &mut Vec<u8>) {
    let mut bits = Bits::new(out);
    if data.is_empty() {
        bits.reserve(0);
        // BFINAL=1, BTYPE=01 (fixed codes), then end-of-block (code 0000000).
        bits.put(0b011, 3);
        bits.put(0, 7);
        bits.finish();
        return;
    }
    let mut runs = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = (start + BLOCK_INPUT).min(data.len());
        block(&data[..end], start, &mut runs, end == data.len(), &mut bits);
        start = end;
    }
    bits.finish();
}

/// One run: where it starts and how many copies of the byte before it it is.
type Run = (usize, usize);

/// One dynamic block of `all[start..]` (the byte before `start`, if any, may start a run).
///
/// Two passes: one counts the symbols and notes the runs, one writes. A run is taken wherever
/// the byte before repeats at least [`MIN_RUN`] times (greedy, as zlib's `Z_RLE`).
fn block(all: &[u8], start: usize, runs: &mut Vec<Run>, last: bool, bits: &mut Bits<'_>) {
    runs.clear();
    bits.reserve(all.len() - start);
    // Every byte counted as a literal (four tables: no store waits on the one before), then
    // the runs' bytes moved to their length symbols.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = all[start..].chunks_exact(4);
    for q in &mut quads {
        for (t, &b) in counts.iter_mut().zip(q) {
            t[usize::from(b)] += 1;
        }
    }
    for &b in quads.remainder() {
        counts[0][usize::from(b)] += 1;
    }
    let mut litlen = [0u32; LITLEN_SYMS];
    for (s, n) in litlen.iter_mut().take(256).enumerate() {
        *n = counts.iter().map(|t| t[s]).sum();
    }
    let mut i = start.max(1);
    while i < all.len() {
        match next_repeat(all, i) {
            Some(j) => i = j,
            None => break,
        }
        let b = all[i];
        let limit = (all.len() - i).min(MAX_RUN);
        let len = 1 + all[i + 1..i + limit]
            .iter()
            .take_while(|&&x| x == b)
            .count();
        if len >= MIN_RUN {
            runs.push((i, len));
            litlen[usize::from(b)] -= len as u32;
            litlen[usize::from(LENGTH_SYMBOL[len - MIN_RUN])] += 1;
            i += len;
        } else {
            i += 1;
        }
    }
    litlen[END_OF_BLOCK] += 1;

    let lit_lens = code_lengths(&litlen, MAX_CODE_LEN);
    let lit_codes = canonical_codes(&lit_lens);
    // Two distance codes of one bit: a complete code every inflater accepts; only code 0
    // (distance 1) is used.
    let dist_lens = [1u8, 1];

    let nlit = 257
        + lit_lens[257..]
            .iter()
            .rposition(|&l| l != 0)
            .map_or(0, |p| p + 1);
    let mut all_lens = Vec::with_capacity(nlit + dist_lens.len());
    all_lens.extend_from_slice(&lit_lens[..nlit]);
    all_lens.extend_from_slice(&dist_lens);
    let cl_tokens = codelen_tokens(&all_lens);
    let mut cl_freq = [0u32; 19];
    for &(sym, _, _) in &cl_tokens {
        cl_freq[usize::from(sym)] += 1;
    }
    let cl_lens = code_lengths(&cl_freq, MAX_CODELEN_CODE_LEN);
    let cl_codes = canonical_codes(&cl_lens);
    let ncl = 4.max(
        CODELEN_ORDER
            .iter()
            .rposition(|&s| cl_lens[s] != 0)
            .map_or(0, |p| p + 1),
    );

    // Header: BFINAL, BTYPE=10 (dynamic), HLIT, HDIST, HCLEN.
    bits.put(u64::from(last), 1);
    bits.put(0b10, 2);
    bits.put((nlit - 257) as u64, 5);
    bits.put((dist_lens.len() - 1) as u64, 5);
    bits.put((ncl - 4) as u64, 4);
    for &s in &CODELEN_ORDER[..ncl] {
        bits.put(u64::from(cl_lens[s]), 3);
    }
    for &(sym, extra_bits, extra) in &cl_tokens {
        let s = usize::from(sym);
        bits.put(u64::from(cl_codes[s]), u32::from(cl_lens[s]));
        bits.put(u64::from(extra), u32::from(extra_bits));
    }

    // Data. The distance code (code 0, one bit: 0) follows each length.
    let literals = |bits: &mut Bits<'_>, bytes: &[u8]| {
        // Three literals at a time: three codes of at most 15 bits fit one `put`.
        let mut triples = bytes.chunks_exact(3);
        for t in &mut triples {
            let (x, y, z) = (usize::from(t[0]), usize::from(t[1]), usize::from(t[2]));
            let (lx, ly) = (u32::from(lit_lens[x]), u32::from(lit_lens[y]));
            let v = u64::from(lit_codes[x])
                | (u64::from(lit_codes[y]) << lx)
                | (u64::from(lit_codes[z]) << (lx + ly));
            bits.put(v, lx + ly + u32::from(lit_lens[z]));
        }
        for &x in triples.remainder() {
            let x = usize::from(x);
            bits.put(u64::from(lit_codes[x]), u32::from(lit_lens[x]));
        }
    };
    let dist0_len = u32::from(dist_lens[0]);
    let mut at = start;
    for &(run_at, len) in runs.iter() {
        literals(bits, &all[at..run_at]);
        let s = usize::from(LENGTH_SYMBOL[len - MIN_RUN]);
        let (extra_bits, extra) = length_extra(len);
        // Length code, its extra bits, then distance code 0 (the bit 0).
        let code = u64::from(lit_codes[s]) | (u64::from(extra) << lit_lens[s]);
        bits.put(code, u32::from(lit_lens[s]) + extra_bits + dist0_len);
        at = run_at + len;
    }
    literals(bits, &all[at..]);
    bits.put(
        u64::from(lit_codes[END_OF_BLOCK]),
        u32::from(lit_lens[END_OF_BLOCK]),
    );
}

/// The first `j ≥ i` (`i ≥ 1`) where `all[j]` equals the byte before it, eight bytes at a time.
fn next_repeat(all: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&all[at..at + 8]);
        u64::from_le_bytes(w)
    };
    while i + 8 <= all.len() {
        // A zero byte of `x` is an equal pair; the lowest one the bit trick flags is exact.
        let x = word(i - 1) ^ word(i);
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(i + (zeros.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    (i..all.len()).find(|&j| all[j - 1] == all[j])
}

/// The length symbol (257..=285) of each match length `3 + i`.
const LENGTH_SYMBOL: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = length_symbol(i + MIN_RUN);
        i += 1;
    }
    t
};

/// Base lengths of symbols 257..=284 (285 is 258 exactly).
const LENGTH_BASE: [u16; 28] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227,
];

const fn length_symbol(len: usize) -> u16 {
    if len == MAX_RUN {
        return 285;
    }
    let mut s = 27;
    while LENGTH_BASE[s] as usize > len {
        s -= 1;
    }
    257 + s as u16
}

/// The extra bits (count, value) of match length `len`.
fn length_extra(len: usize) -> (u32, u32) {
    let s = usize::from(length_symbol(len)) - 257;
    if s == 28 {
        return (0, 0);
    }
    let count = if s < 8 { 0 } else { (s as u32 - 4) / 4 };
    (count, (len - usize::from(LENGTH_BASE[s])) as u32)
}

/// Code lengths of the code-length alphabet's run symbols, as (symbol, extra bit count,
/// extra value) — RFC 1951 §3.2.7: 16 repeats the previous length 3–6 times, 17 a zero 3–10
/// times, 18 a zero 11–138 times.
fn codelen_tokens(lens: &[u8]) -> Vec<(u8, u8, u8)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lens.len() {
        let l = lens[i];
        let mut run = lens[i..].iter().take_while(|&&x| x == l).count();
        i += run;
        if l == 0 {
            while run >= 11 {
                let r = run.min(138);
                out.push((18, 7, (r - 11) as u8));
                run -= r;
            }
            if run >= 3 {
                out.push((17, 3, (run - 3) as u8));
                run = 0;
            }
            out.extend(std::iter::repeat_n((0, 0, 0), run));
        } else {
            out.push((l, 0, 0));
            run -= 1;
            while run >= 3 {
                let r = run.min(6);
                out.push((16, 2, (r - 3) as u8));
                run -= r;
            }
            out.extend(std::iter::repeat_n((l, 0, 0), run));
        }
    }
    out
}

/// Huffman code lengths for `freq`, none longer than `limit`. At least two symbols get a
/// code (a lone symbol is paired with the first unused one), so the code is always complete.
/// Ties break by symbol number: the lengths depend on the frequencies only.
fn code_lengths<const N: usize>(freq: &[u32; N], limit: u8) -> [u8; N] {
    let mut lens = [0u8; N];
    // Leaves by (frequency, symbol).
    let mut leaves: Vec<(u64, usize)> = (0..N)
        .filter(|&s| freq[s] > 0)
        .map(|s| (u64::from(freq[s]), s))
        .collect();
    while leaves.len() < 2 {
        let unused = (0..N).find(|s| !leaves.iter().any(|&(_, l)| l == *s));
        match unused {
            Some(s) => leaves.push((0, s)),
            None => return lens,
        }
    }
    leaves.sort_unstable();
    let n = leaves.len();
    // Room for every symbol within the limit (19 symbols in 7 bits, 286 in 15).
    debug_assert!(n <= 1 << limit);

    // Huffman's algorithm with two queues (leaves sorted, internal nodes made in order of
    // weight): node i < n is leaf i, node n + k is the k-th internal node.
    let mut parent = vec![0usize; 2 * n - 1];
    let mut weight: Vec<u64> = leaves.iter().map(|&(w, _)| w).collect();
    let (mut next_leaf, mut next_node) = (0, n);
    for k in n..2 * n - 1 {
        let mut pick = || {
            if next_leaf < n && (next_node >= k || weight[next_leaf] <= weight[next_node]) {
                next_leaf += 1;
                next_leaf - 1
            } else {
                next_node += 1;
                next_node - 1
            }
        };
        let (a, b) = (pick(), pick());
        weight.push(weight[a] + weight[b]);
        parent[a] = k;
        parent[b] = k;
    }
    // Depths: the root is the last node; parents come after their children.
    let mut depth = vec![0u32; 2 * n - 1];
    for i in (0..2 * n - 2).rev() {
        depth[i] = depth[parent[i]] + 1;
    }

    // Count codes per length, folding lengths over the limit into it, then restore Kraft's
    // equality by lengthening the longest codes under the limit (as miniz does).
    let limit = usize::from(limit);
    let mut count = vec![0u32; limit + 1];
    for &d in &depth[..n] {
        count[(d as usize).min(limit)] += 1;
    }
    let kraft = |count: &[u32]| -> u64 {
        (1..=limit)
            .map(|l| u64::from(count[l]) << (limit - l))
            .sum::<u64>()
    };
    let full = 1u64 << limit;
    let mut total = kraft(&count);
    while total > full {
        count[limit] -= 1;
        if let Some(l) = (1..limit).rev().find(|&l| count[l] != 0) {
            count[l] -= 1;
            count[l + 1] += 2;
        }
        total -= 1;
    }
    debug_assert_eq!(kraft(&count), full);

    // The longest codes go to the least frequent symbols.
    let mut l = limit;
    for &(_, sym) in &leaves {
        while count[l] == 0 {
            l -= 1;
        }
        lens[sym] = l as u8;
        count[l] -= 1;
    }
    lens
}

/// Canonical Huffman codes (RFC 1951 §3.2.2) for `lens`, bit-reversed: deflate sends a code's
/// most significant bit first into a stream written least significant bit first.
fn canonical_codes<const N: usize>(lens: &[u8; N]) -> [u16; N] {
    let mut count = [0u16; 16];
    for &l in lens.iter() {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    let mut codes = [0u16; N];
    for (s, &l) in lens.iter().enumerate() {
        if l != 0 {
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            codes[s] = c.reverse_bits() >> (16 - u32::from(l));
        }
    }
    codes
}

/// Bits into bytes, least significant first. `out` is kept [`Bits::reserve`]d ahead of the
/// bits, so each `put` stores eight bytes and keeps fewer than eight bits back.
struct Bits<'a> {
    out: &'a mut Vec<u8>,
    /// Where the next whole byte goes; `out` is cut back to it at the end.
    pos: usize,
    acc: u64,
    /// Bits in `acc`, always fewer than 8 between calls.
    n: u32,
}

impl<'a> Bits<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        let pos = out.len();
        Bits {
            out,
            pos,
            acc: 0,
            n: 0,
        }
    }

    /// Makes room for a block of `input` bytes: at most 15 bits a literal, 21 a run of three
    /// or more, plus the block header (under 600 bytes) and the eight bytes a `put` stores.
    fn reserve(&mut self, input: usize) {
        let need = self.pos + 2 * input + 1024;
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
    }

    /// Appends the low `n` bits of `v` (`n` ≤ 56; `v` has no bits above them).
    #[inline]
    fn put(&mut self, v: u64, n: u32) {
        self.acc |= v << self.n;
        self.n += n;
        self.out[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let whole = self.n / 8;
        self.pos += whole as usize;
        self.acc >>= whole * 8;
        self.n -= whole * 8;
    }

    /// Writes the last partial byte, zero-padded, and cuts `out` to the bytes written.
    fn finish(&mut self) {
        if self.n > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
        }
        self.out.truncate(self.pos);
        self.acc = 0;
        self.n = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;

    use super::*;

    fn rle(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        deflate_rle(data, &mut out);
        out
    }

    /// Inflates with two independent inflaters (zlib-rs and libdeflate) and checks both.
    fn round_trip(data: &[u8]) -> usize {
        let z = rle(data);
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&z[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(
            back == data,
            "zlib-rs inflated other bytes ({} in)",
            data.len()
        );
        let mut d = libdeflater::Decompressor::new();
        let mut back = vec![0u8; data.len()];
        let n = d.deflate_decompress(&z, &mut back).unwrap();
        assert_eq!(n, data.len());
        assert!(back == data, "libdeflate inflated other bytes");
        z.len()
    }

    fn xorshift(seed: u32) -> impl FnMut() -> u32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }

    #[test]
    fn every_kind_of_input_inflates_to_itself() {
        let mut r = xorshift(0x9e37_79b9);
        round_trip(b"");
        round_trip(b"a");
        round_trip(b"aa");
        round_trip(b"aaa");
        round_trip(b"aaaa");
        round_trip(&[0u8; 258]);
        round_trip(&[0u8; 259]);
        round_trip(&[0u8; 260]);
        round_trip(&[7u8; 1_000_000]);
        let all: Vec<u8> = (0..=255u8).collect();
        round_trip(&all);
        // Every run length, each after a different byte.
        let mut runs = Vec::new();
        for len in 1..=600usize {
            runs.push((len % 251) as u8 ^ 0x55);
            runs.extend(std::iter::repeat_n((len % 253) as u8, len));
        }
        round_trip(&runs);
        // Uniform random bytes: every literal, nearly equal frequencies.
        let random: Vec<u8> = (0..300_000).map(|_| r() as u8).collect();
        round_trip(&random);
        // Skewed frequencies: codes hit the 15-bit limit.
        let skewed: Vec<u8> = (0..400_000)
            .map(|_| {
                let v = r();
                (v.trailing_zeros().min(31) * 8 + (v >> 29) % 2) as u8
            })
            .collect();
        round_trip(&skewed);
        // Fibonacci-like frequencies force lengths over the limit before folding.
        let mut fib = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for s in 0..25u8 {
            fib.extend(std::iter::repeat_n(s, a));
            (a, b) = (b, a + b);
            fib.push(200);
        }
        round_trip(&fib);
        // Block boundaries: runs and data across the 128 KiB block cuts.
        let mut mixed = Vec::new();
        while mixed.len() < 3 * BLOCK_INPUT + 1000 {
            let v = r();
            if v.is_multiple_of(7) {
                mixed.extend(std::iter::repeat_n(v as u8, (v >> 8) as usize % 700));
            } else {
                mixed.push((v >> 16) as u8);
            }
        }
        round_trip(&mixed);
        // Many small inputs: alphabets of 1 to 256 symbols, with and without runs.
        for case in 0..300u32 {
            let len = (r() % 3000) as usize;
            let symbols = 1 + r() % 256;
            let mut d = Vec::with_capacity(len);
            while d.len() < len {
                let b = (r() % symbols) as u8;
                let n = if case % 3 == 0 {
                    1 + r() as usize % 300
                } else {
                    1
                };
                d.extend(std::iter::repeat_n(b, n.min(len - d.len())));
            }
            round_trip(&d);
        }
        round_trip(&mixed[..BLOCK_INPUT]);
        round_trip(&mixed[..BLOCK_INPUT + 1]);
    }

    #[test]
    fn text_without_repeats_compresses_by_its_statistics_and_runs_by_their_length() {
        // base64 of random bytes: 6 bits per character plus the line ends.
        let mut r = xorshift(42);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let text: Vec<u8> = (0..1 << 20)
            .map(|i| {
                if i % 77 == 76 {
                    b'\n'
                } else {
                    alphabet[(r() % 64) as usize]
                }
            })
            .collect();
        let n = round_trip(&text);
        let ratio = n as f64 / text.len() as f64;
        assert!((0.75..0.77).contains(&ratio), "ratio {ratio}");
        // A megabyte of zeros is a few thousand runs of 258.
        let n = round_trip(&[0u8; 1 << 20]);
        assert!(n < 1 << 20 >> 8, "{n} bytes");
    }

    #[test]
    fn the_word_scan_finds_the_first_repeat_as_a_byte_scan_does() {
        let mut r = xorshift(7);
        // Few symbols: repeats everywhere, at every offset within a word.
        let data: Vec<u8> = (0..5000)
            .map(|_| [0, 1, 0x7f, 0x80, 0xff][(r() % 5) as usize])
            .collect();
        for i in 1..data.len() {
            let naive = (i..data.len()).find(|&j| data[j - 1] == data[j]);
            assert_eq!(next_repeat(&data, i), naive, "from {i}");
        }
        assert_eq!(next_repeat(b"ab", 1), None);
        assert_eq!(next_repeat(b"abcdefghijkk", 1), Some(11));
    }

    #[test]
    fn code_lengths_respect_the_limit_and_kraft() {
        let mut freq = [0u32; LITLEN_SYMS];
        let (mut a, mut b) = (1u32, 1u32);
        for f in freq.iter_mut().take(30) {
            *f = a;
            (a, b) = (b, a.saturating_add(b));
        }
        let lens = code_lengths(&freq, 15);
        assert!(lens.iter().all(|&l| l <= 15));
        let kraft: u64 = lens
            .iter()
            .filter(|&&l| l != 0)
            .map(|&l| 1u64 << (15 - l))
            .sum();
        assert_eq!(kraft, 1 << 15);
        // More frequent symbols never get longer codes.
        for i in 1..30 {
            assert!(lens[i] <= lens[i - 1], "{lens:?}");
        }
        // One symbol alone still gets a complete code of two.
        let mut one = [0u32; 19];
        one[5] = 9;
        let lens = code_lengths(&one, 7);
        assert_eq!(lens.iter().filter(|&&l| l == 1).count(), 2);
    }
}
