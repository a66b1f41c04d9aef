// SPDX-License-Identifier: GPL-2.0
/*
 * modread.bpf.c — a kprobe on a kernel module's function that reads a field of the
 * module's own struct with a CO-RE relocation.
 *
 * btfr_loader_poke(struct btfr_loader_state *s) lives in the btfr_loader module
 * (integration/modules/btfr_loader.c).  The struct is not in vmlinux, so vmlinux.h does
 * not declare it: the local declaration below names only the field we read, and
 * preserve_access_index makes clang record a CO-RE field relocation
 * ("btfr_loader_state.counter") instead of a fixed offset.  libbpf resolves it at load
 * time against the target BTF: the kernel's own module BTF, or the file passed as
 * bpf_object_open_opts.btf_custom_path (btfreconciled's merged BTF).  Where neither has
 * the struct, libbpf poisons the instruction and the load fails — the program never
 * guesses the offset.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "modread.h"

struct btfr_loader_state {
	__u32 counter;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("kprobe/btfr_loader_poke")
int BPF_KPROBE(modread_poke, struct btfr_loader_state *s)
{
	struct modread_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->counter = BPF_CORE_READ(s, counter);
	/* the byte offset libbpf patched in: shows which BTF the relocation used */
	e->offset = bpf_core_field_offset(s->counter);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
