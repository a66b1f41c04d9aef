// SPDX-License-Identifier: GPL-2.0
/*
 * dupread.bpf.c — a kprobe on btfr_dup_a_poke() that reads btfr_dup.x with a CO-RE
 * relocation.  Two fixture modules (btfr_dup_a, btfr_dup_b) define `struct btfr_dup` with x
 * at different offsets; the local declaration names only x, so libbpf must pick the layout
 * from the target BTF: with both modules in it, it finds two candidates that disagree and
 * fails ("field offset ambiguity"); with btfr_dup_a's merged file (or a minimized file made
 * from it) it reads x at btfr_dup_a's offset.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

struct btfr_dup {
	__u32 x;
} __attribute__((preserve_access_index));

/* what the last probe saw: x's value, and the offset libbpf patched in */
__u32 seen_x;
__u32 seen_offset;

SEC("kprobe/btfr_dup_a_poke")
int BPF_KPROBE(dupread_poke, struct btfr_dup *d)
{
	seen_x = BPF_CORE_READ(d, x);
	seen_offset = bpf_core_field_offset(d->x);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
