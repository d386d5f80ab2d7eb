//! Pinned host buffers wait for their queued copies on the context's single default stream
//! (cudarc tracks its own per-buffer event only in multi-stream mode): reading right after
//! queuing a copy in sees the copied data, and writing right after queuing a copy out does
//! not change what the copy delivers.
//! Skips (with a message) on machines without a GPU unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::gpu_or_skip;

/// Large enough (64 MiB) that the copy is still running when the host looks.
const LEN: usize = 16 << 20;

fn pattern(salt: u32) -> Vec<u32> {
    (0..LEN as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).rotate_left(7) ^ salt)
        .collect()
}

#[test]
fn pinned_reads_and_writes_wait_for_queued_copies() {
    let Some(gpu) = gpu_or_skip("pinned_reads_and_writes_wait_for_queued_copies") else {
        return;
    };
    // a fresh context object: only its default stream, no second one created
    let s = gpu.stream();
    for round in 0..3u32 {
        let data = pattern(round + 1);
        let dev = s.upload(&data).unwrap();
        let mut pin = gpu.alloc_pinned::<u32>(LEN).unwrap();
        s.copy_to_pinned(&dev, &mut pin).unwrap();
        // no stream synchronize: the read itself must wait
        let got = pin.as_slice().unwrap();
        let bad = got.iter().zip(&data).position(|(a, b)| a != b);
        assert_eq!(
            bad, None,
            "round {round}: pinned read before its copy finished"
        );

        // copy out of pinned memory, then overwrite it at once: the device gets the old data
        let mut dst = s.alloc_zeroed::<u32>(LEN).unwrap();
        s.copy_from_pinned(&pin, &mut dst).unwrap();
        pin.as_mut_slice().unwrap().fill(0xdead_beef);
        let back = s.download(&dst).unwrap();
        let bad = back.iter().zip(&data).position(|(a, b)| a != b);
        assert_eq!(
            bad, None,
            "round {round}: pinned write overtook its copy out"
        );
    }
}
