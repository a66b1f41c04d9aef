// SPDX-License-Identifier: GPL-2.0
/*
 * core_kinds.bpf.c — CO-RE relocations of every kind, as clang writes them, for comparing
 * `btfreconcilectl min-core-btf` with `bpftool gen min_core_btf` (integration/
 * test_min_core_btf.py compiles it in the trixie root; it is never loaded).
 *
 * Field offsets through pointers, nested and anonymous members, arrays of structs and
 * bitfields; field existence and sizes; type existence, size, id and "matches"; enum value
 * existence and value; a flavored local type (task_struct___probe) whose members partly
 * exist.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

struct task_struct___probe {
	int pid;
	int btfr_no_such_member;
} __attribute__((preserve_access_index));

__u64 out[32];

SEC("kprobe/do_nanosleep")
int BPF_KPROBE(kinds_task)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	struct task_struct___probe *p = (void *)t;

	out[0] = BPF_CORE_READ(t, real_parent, tgid);
	out[1] = BPF_CORE_READ(t, signal, rlim[7].rlim_cur); /* RLIMIT_NOFILE */
	out[2] = BPF_CORE_READ(t, mm, mmap_base);
	out[3] = BPF_CORE_READ_BITFIELD_PROBED(t, sched_reset_on_fork);
	out[4] = bpf_core_field_exists(p->btfr_no_such_member);
	out[5] = BPF_CORE_READ(p, pid);
	out[6] = bpf_core_field_size(t->comm);
	out[7] = bpf_core_type_exists(struct bpf_iter_num);
	out[8] = bpf_core_type_size(struct file);
	out[9] = bpf_core_type_id_kernel(struct task_struct);
	out[10] = bpf_core_type_matches(struct list_head);
	out[11] = bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ringbuf_output);
	out[12] = bpf_core_enum_value(enum pid_type, PIDTYPE_TGID);
	out[13] = bpf_core_type_exists(irq_handler_t);
	out[14] = BPF_CORE_READ(t, thread_pid, numbers[0].nr);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(kinds_sock, struct sock *sk)
{
	out[16] = BPF_CORE_READ(sk, __sk_common.skc_dport);
	out[17] = BPF_CORE_READ(sk, __sk_common.skc_family);
	out[18] = BPF_CORE_READ(sk, sk_protocol);
	out[19] = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
