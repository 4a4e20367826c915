#!/usr/bin/env bash
# Prints the sanitizer `cargo fuzz` builds TARGET with (`-s <this>`): one choice, read by CI's
# smoke run and by campaign.sh, so both fuzz the same binaries.
#
# AddressSanitizer finds memory errors in unsafe code. The guest library is the project's
# unsafe code (DMA memory, volatile MMIO), and proto's decoders are where bytes become types,
# so the targets that reach them keep it. The host-side targets run only safe code of ours
# (the host's few unsafe blocks are KVM unions and the VFIO ioctl, which no target reaches)
# over vm-memory's mappings, and there ASan's shadow memory and allocator hooks cost 3 to 5
# times the executions (device_queue: 3.3k/s with it, 15k/s without, same machine, same
# load): they run without it, keeping debug assertions and overflow checks, so that ten
# million executions take minutes, not hours.
set -euo pipefail
case "${1:?usage: sanitizer.sh TARGET}" in
    proto_decode | guest_driver | guest_events) echo address ;;
    device_queue | pool_model | vfio_errno | snapshot_restore) echo none ;;
    *)
        echo "sanitizer.sh: no sanitizer chosen for target '$1': add it here" >&2
        exit 1
        ;;
esac
