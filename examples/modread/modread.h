/* SPDX-License-Identifier: GPL-2.0 */
/* What modread.bpf.c sends to user space through its ring buffer. */
#ifndef MODREAD_H
#define MODREAD_H

struct modread_event {
	__u32 counter;	/* btfr_loader_state.counter, read through CO-RE */
	__u32 offset;	/* the field offset libbpf resolved from the target BTF */
};

#endif
