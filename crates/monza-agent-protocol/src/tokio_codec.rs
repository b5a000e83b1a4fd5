//! The pure codec as a `tokio_util::codec` Decoder/Encoder, for an async host
//! (`Framed<UnixStream, AgentCodec>`).

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{DecodeError, EncodeError, Message, check_len, decode, encode};

/// Frames [`Message`]s over an async byte stream with [`decode`] and [`encode`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentCodec;

/// What can go wrong on a framed stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl Decoder for AgentCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match decode(src) {
            Ok(Some((message, used))) => {
                src.advance(used);
                Ok(Some(message))
            }
            Ok(None) => {
                // Room for the whole frame once its length is known (already checked).
                if let Some(prefix) = src.first_chunk::<4>() {
                    let len = check_len(*prefix)?;
                    src.reserve((4 + len).saturating_sub(src.len()));
                }
                Ok(None)
            }
            Err(e @ (DecodeError::UnknownKind { .. } | DecodeError::BadBody { .. })) => {
                // The frame is whole: drop it so the stream stays in step for the next one.
                if let Some(prefix) = src.first_chunk::<4>() {
                    let len = check_len(*prefix)?;
                    src.advance(4 + len);
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = src
                    .first_chunk::<4>()
                    .map_or(4, |prefix| 4 + u32::from_be_bytes(*prefix) as usize);
                Err(DecodeError::Truncated {
                    expected,
                    got: src.len(),
                }
                .into())
            }
        }
    }
}

impl Encoder<Message> for AgentCodec {
    type Error = CodecError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut frame = Vec::new();
        encode(&message, &mut frame)?;
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Stream, encode_to_vec};

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let messages = [
            Message::Ping { id: 1 },
            Message::Output {
                id: 2,
                stream: Stream::Stderr,
                data: vec![0xff; 1000],
            },
            Message::Pong { id: 3 },
        ];
        let mut wire = BytesMut::new();
        for message in &messages {
            AgentCodec.encode(message.clone(), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        for step in [1, 7, 64, wire.len()] {
            let mut codec = AgentCodec;
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(message) = codec.decode(&mut buf).unwrap() {
                    got.push(message);
                }
            }
            assert!(codec.decode_eof(&mut buf).unwrap().is_none());
            assert_eq!(got, messages, "pieces of {step} bytes");
        }
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated_and_bad_frames_are_skipped() {
        let frame = encode_to_vec(&Message::Ping { id: 1 }).unwrap();
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        let err = AgentCodec.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::Decode(DecodeError::Truncated { .. })),
            "{err}"
        );

        let mut unknown = frame.clone();
        unknown[5] = 0x7e;
        let mut buf = BytesMut::from(&unknown[..]);
        buf.extend_from_slice(&frame);
        assert!(AgentCodec.decode(&mut buf).is_err());
        assert_eq!(
            AgentCodec.decode(&mut buf).unwrap(),
            Some(Message::Ping { id: 1 })
        );
    }
}
