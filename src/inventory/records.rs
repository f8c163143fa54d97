//! Reading the little-endian records of the agent's state files (the hash cache, the walk
//! state): every read is bounds-checked and fails with the file's own "truncated" error.

/// A cursor over a record area; `short` is the error a read past its end returns.
#[derive(Debug)]
pub struct LeReader<'a, E> {
    bytes: &'a [u8],
    at: usize,
    short: E,
}

impl<'a, E: Clone> LeReader<'a, E> {
    /// Read `bytes` from offset `at`.
    pub fn new(bytes: &'a [u8], at: usize, short: E) -> LeReader<'a, E> {
        LeReader { bytes, at, short }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], E> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.short.clone())?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], E> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, E> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, E> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, E> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, E> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian i128.
    pub fn i128(&mut self) -> Result<i128, E> {
        self.array().map(i128::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_fails_past_the_end() {
        let b = [1u8, 2, 0, 3, 0, 0, 0, 9];
        let mut r = LeReader::new(&b, 0, "short");
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.u64(), Err("short"));
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(r.take(usize::MAX), Err("short"));
    }
}
