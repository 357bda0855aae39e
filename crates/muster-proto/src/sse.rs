//! Splitting a Server-Sent Events byte stream (`GET /v1/watch`) into frames, for the CLI and
//! the client library.

/// Largest frame kept while waiting for its end; a longer one is an error (a snapshot of a
/// service at its instance limit fits well within it).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// One event: its `event:`, `id:` and `data:` fields (comments and keepalives are skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// `event:`.
    pub event: String,
    /// `id:`.
    pub id: Option<u64>,
    /// `data:` (lines joined with `\n`).
    pub data: String,
}

/// Bytes in, frames out.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_FRAME_BYTES {
            return Err(format!(
                "a watch event exceeds {MAX_FRAME_BYTES} bytes without ending"
            ));
        }
        Ok(())
    }

    /// The next complete frame with data, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&raw);
            let mut frame = Frame::default();
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => frame.event = value.to_string(),
                    "id" => frame.id = value.parse().ok(),
                    "data" => data.push(value),
                    _ => {} // comments (": keepalive") and unknown fields
                }
            }
            if !data.is_empty() {
                frame.data = data.join("\n");
                return Some(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_keepalives_skipped() {
        let mut s = Splitter::default();
        s.push(b": keepalive\n\nevent: upsert\nid: 7\ndata: {\"a\"")
            .unwrap();
        assert_eq!(s.next_frame(), None, "not complete yet");
        s.push(b":1}\n\nevent: delete\ndata: x\n\n").unwrap();
        assert_eq!(
            s.next_frame(),
            Some(Frame {
                event: "upsert".into(),
                id: Some(7),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(s.next_frame().map(|f| f.event), Some("delete".into()));
        assert_eq!(s.next_frame(), None);
    }
}
