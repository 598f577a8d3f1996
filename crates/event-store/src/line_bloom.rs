//! A blocked Bloom filter for view runs: all of a key's bits fall in one 64-byte line, so a
//! lookup touches one cache line instead of one per probe (a lookup checks the filter of every
//! run, most of them for keys the run does not hold).

/// One cache line of filter bits.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// Bits per line: a filter's size is a multiple of this.
pub(crate) const LINE_BITS: u64 = 512;
/// Bits set per key, each chosen by 9 bits of the key's second hash.
const PROBES: u32 = 7;

pub(crate) struct LineBloom {
    lines: Vec<Line>,
}

impl LineBloom {
    /// An empty filter of at least `bits` bits (rounded up to whole lines, at least one).
    pub(crate) fn with_bits(bits: u64) -> LineBloom {
        let lines = bits.div_ceil(LINE_BITS).max(1);
        LineBloom {
            lines: vec![Line::default(); lines as usize],
        }
    }

    pub(crate) fn bits(&self) -> u64 {
        self.lines.len() as u64 * LINE_BITS
    }

    /// The filter stored as `bytes` (little-endian words); `None` unless whole lines.
    pub(crate) fn from_le_bytes(bytes: &[u8]) -> Option<LineBloom> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(64) {
            return None;
        }
        let lines = bytes
            .chunks_exact(64)
            .map(|line| {
                let mut words = [0u64; 8];
                for (w, b) in words.iter_mut().zip(line.chunks_exact(8)) {
                    *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
                Line(words)
            })
            .collect();
        Some(LineBloom { lines })
    }

    /// How many 64-byte lines the filter has.
    pub(crate) fn lines(&self) -> usize {
        self.lines.len()
    }

    /// Lines `lines` of the filter as stored: each line's words, little-endian (what
    /// [`LineBloom::from_le_bytes`] reads back).
    pub(crate) fn write_lines_le(&self, lines: std::ops::Range<usize>, out: &mut Vec<u8>) {
        for line in &self.lines[lines] {
            for w in line.0 {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }

    /// The line of a key's first hash, and its bit positions in the line from the second.
    fn probes(lines: usize, (h1, h2): (u64, u64)) -> (usize, impl Iterator<Item = usize>) {
        let line = ((u128::from(h1) * lines as u128) >> 64) as usize;
        // The second hash's lowest bit is always set: use the 63 above it.
        let bits = h2 >> 1;
        (
            line,
            (0..PROBES).map(move |i| ((bits >> (9 * i)) & 511) as usize),
        )
    }

    pub(crate) fn insert(&mut self, hashes: (u64, u64)) {
        let (line, probes) = LineBloom::probes(self.lines.len(), hashes);
        let words = &mut self.lines[line].0;
        for b in probes {
            words[b / 64] |= 1 << (b % 64);
        }
    }

    pub(crate) fn may_contain(&self, hashes: (u64, u64)) -> bool {
        let (line, mut probes) = LineBloom::probes(self.lines.len(), hashes);
        let words = &self.lines[line].0;
        probes.all(|b| words[b / 64] & (1 << (b % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes the views give the filter, of `i`'s bytes.
    fn hashes(i: u64) -> (u64, u64) {
        crate::viewdb::key_hashes(&i.to_le_bytes())
    }

    #[test]
    fn holds_every_key_put_in_and_few_others_and_survives_its_bytes() {
        let n = 10_000u64;
        let mut bloom = LineBloom::with_bits(n * 10);
        for i in 0..n {
            bloom.insert(hashes(i));
        }
        let mut bytes = Vec::new();
        bloom.write_lines_le(0..bloom.lines(), &mut bytes);
        assert_eq!(bytes.len() as u64 * 8, bloom.bits());
        let back = LineBloom::from_le_bytes(&bytes).unwrap();
        assert!((0..n).all(|i| back.may_contain(hashes(i))));
        let false_positives = (n..11 * n).filter(|&i| back.may_contain(hashes(i))).count();
        // About 1% at 10 bits a key.
        assert!(false_positives < 2_000, "{false_positives} of 100000");
        assert!(LineBloom::from_le_bytes(&bytes[..100]).is_none());
    }
}
