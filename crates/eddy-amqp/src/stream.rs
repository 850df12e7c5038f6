//! Stream-queue consumers: a task per consumer reads records from the stream's partition,
//! from the offset the consumer asked for, and delivers them as its credit (prefetch) allows.
//! Acknowledgements only return credit: nothing is removed from a stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use eddy_broker::{ConsumerSink, Delivery, Partition};
use tokio::sync::watch;

use crate::channel::ChannelConsumer;

/// Batch bytes read per pass.
const READ_BYTES: usize = 256 << 10;

pub(crate) async fn deliver(
    consumer: Arc<ChannelConsumer>,
    partition: Arc<Partition>,
    mut offset: u64,
    mut appends: watch::Receiver<u64>,
) {
    let stream = consumer.queue.name.clone();
    // records read but not yet delivered (credit ran out): delivered first next time, so a
    // large batch is decoded once, not once per credit window
    let mut pending: std::collections::VecDeque<eddy_broker::records::Record> = Default::default();
    loop {
        if consumer.stopped.load(Ordering::Relaxed)
            || consumer.channel.closed.load(Ordering::Relaxed)
        {
            return;
        }
        appends.borrow_and_update();
        // as much as the credit allows
        'fill: while consumer.can_accept()
            && (!pending.is_empty() || offset < partition.end_offset())
        {
            if pending.is_empty() {
                match eddy_broker::stream::read(&partition, offset, READ_BYTES) {
                    Ok(r) => pending.extend(r),
                    Err(e) => {
                        tracing::error!(stream = %stream, offset, "reading the stream failed: {e}");
                        return;
                    }
                }
            }
            if pending.is_empty() {
                // only markers or unreadable batches there: step past them
                match partition
                    .read(offset, 1)
                    .ok()
                    .and_then(|b| b.first().cloned())
                {
                    Some(b) => offset = offset.max(b.base_offset + b.record_count.max(1) as u64),
                    None => break,
                }
                continue;
            }
            while let Some(r) = pending.pop_front() {
                if !consumer.can_accept() {
                    pending.push_front(r);
                    break 'fill;
                }
                let message = Arc::new(eddy_broker::stream::record_to_message(&r, &stream));
                offset = r.offset + 1;
                consumer.deliver(Delivery {
                    queue: consumer.queue.clone(),
                    consumer_tag: consumer.tag.clone(),
                    message_id: r.offset,
                    message,
                    redelivered: false,
                });
            }
        }
        tokio::select! {
            _ = appends.changed() => {}
            _ = consumer.credit.notified() => {}
            // channel-wide prefetch can free credit through another consumer's acks
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
