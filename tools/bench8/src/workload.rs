//! The data the benchmarks move: message bodies shaped like CPTM8 messages, and
//! domains inserted in one statement.

use tokio_postgres::Client;

use crate::report::Failure;

/// Size of each benchmark message body, in bytes.
pub const MESSAGE_BYTES: usize = 300;

/// `count` JSON envelopes (the wire format of CONTRACT §2) of exactly
/// [`MESSAGE_BYTES`] bytes, each with its sequence number.
pub fn message_bodies(channel: &str, count: u64) -> Vec<Vec<u8>> {
    let timestamp = "2025-01-01T00:00:00.000000000Z";
    (0..count)
        .map(|seq| {
            let head =
                format!("{{\"channel\":\"{channel}\",\"payload\":{{\"seq\":{seq},\"pad\":\"");
            let tail =
                format!("\"}},\"timestamp\":\"{timestamp}\",\"source\":\"orchestratorm8\"}}");
            let pad = MESSAGE_BYTES.saturating_sub(head.len() + tail.len());
            let mut body = String::with_capacity(MESSAGE_BYTES);
            body.push_str(&head);
            body.extend(std::iter::repeat_n('x', pad));
            body.push_str(&tail);
            body.into_bytes()
        })
        .collect()
}

/// Inserts `count` enabled domains `d<i>.bench.example` (company `company<i % 1000>`)
/// into `cptm8domain` in one statement.
pub async fn insert_domains(client: &Client, count: u64) -> Result<u64, Failure> {
    let n = client
        .execute(
            "INSERT INTO cptm8domain (id, name, companyname, enabled)
             SELECT gen_random_uuid(), 'd' || i || '.bench.example', 'company' || (i % 1000), true
             FROM generate_series(1, $1::bigint) AS i",
            &[&(count as i64)],
        )
        .await
        .map_err(|e| Failure::Error(format!("inserting {count} domains: {e}")))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_of_the_right_size() {
        let bodies = message_bodies("bench8.x", 3);
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(b.len(), MESSAGE_BYTES);
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["payload"]["seq"], i as u64);
            assert_eq!(v["source"], "orchestratorm8");
        }
    }
}
