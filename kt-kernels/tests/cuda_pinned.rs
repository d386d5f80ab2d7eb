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

/// The kernel reads of pinned memory (`kt_kernels::cuda::mapped`): a mapped copy delivers
/// the host data and a write right after it waits for it, as a copy engine's copy does; the
/// mapped add equals f32 addition element by element; lengths that differ and elements that
/// are no 4-byte words are refused.
#[test]
fn mapped_reads_of_pinned_memory_copy_and_add() {
    let Some(gpu) = gpu_or_skip("mapped_reads_of_pinned_memory_copy_and_add") else {
        return;
    };
    let s = gpu.stream();
    let data = pattern(7);
    let mut pin = gpu.alloc_pinned::<u32>(LEN).unwrap();
    pin.as_mut_slice().unwrap().copy_from_slice(&data);
    let mut dst = s.alloc_zeroed::<u32>(LEN).unwrap();
    s.copy_from_pinned_mapped(&pin, &mut dst).unwrap();
    pin.as_mut_slice().unwrap().fill(0xdead_beef);
    let back = s.download(&dst).unwrap();
    let bad = back.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(bad, None, "mapped copy: first wrong word");

    // acc += x with x read from the host: values of both signs and magnitudes
    let n = 100_003;
    let acc: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 1e3).collect();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as f32) * 1.3).cos() * 0.01 + (i % 7) as f32)
        .collect();
    let mut host_x = gpu.alloc_pinned::<f32>(n).unwrap();
    host_x.as_mut_slice().unwrap().copy_from_slice(&x);
    let mut dev_acc = s.upload(&acc).unwrap();
    s.add_f32_from_pinned(&mut dev_acc, &host_x).unwrap();
    let got = s.download(&dev_acc).unwrap();
    for (i, ((g, a), b)) in got.iter().zip(&acc).zip(&x).enumerate() {
        assert_eq!(g.to_bits(), (a + b).to_bits(), "element {i}");
    }

    let mut short = s.alloc_zeroed::<u32>(LEN - 1).unwrap();
    assert!(s.copy_from_pinned_mapped(&pin, &mut short).is_err());
    let bytes = gpu.alloc_pinned::<u8>(8).unwrap();
    let mut dev_bytes = s.alloc_zeroed::<u8>(8).unwrap();
    assert!(s.copy_from_pinned_mapped(&bytes, &mut dev_bytes).is_err());
    let mut dev_short = s.alloc_zeroed::<f32>(n - 1).unwrap();
    assert!(s.add_f32_from_pinned(&mut dev_short, &host_x).is_err());
}
