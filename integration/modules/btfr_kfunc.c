// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture (d): exposes kfuncs (BTF ids in .BTF_ids resolved by resolve_btfids,
 * registered with register_btf_kfunc_id_set).  Builds for 6.1 and 6.12.
 */
#include <linux/module.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/btf_ids.h>
#include <linux/sched.h>

#ifndef __bpf_kfunc
#define __bpf_kfunc __used noinline
#endif
#ifndef __bpf_kfunc_start_defs
#define __bpf_kfunc_start_defs()
#define __bpf_kfunc_end_defs()
#endif
#ifndef BTF_KFUNCS_START
#define BTF_KFUNCS_START(name) BTF_SET8_START(name)
#define BTF_KFUNCS_END(name) BTF_SET8_END(name)
#endif

struct btfr_kfunc_args {
	u64 a;
	u64 b;
};

__bpf_kfunc_start_defs();

__bpf_kfunc u64 btfr_kfunc_add(u64 a, u64 b)
{
	return a + b;
}

__bpf_kfunc u64 btfr_kfunc_sum(struct btfr_kfunc_args *args)
{
	return args ? args->a + args->b : 0;
}

__bpf_kfunc int btfr_kfunc_task_pid(struct task_struct *task)
{
	return task ? task->pid : -1;
}

__bpf_kfunc_end_defs();

BTF_KFUNCS_START(btfr_kfunc_ids)
BTF_ID_FLAGS(func, btfr_kfunc_add)
BTF_ID_FLAGS(func, btfr_kfunc_sum)
BTF_ID_FLAGS(func, btfr_kfunc_task_pid, KF_TRUSTED_ARGS)
BTF_KFUNCS_END(btfr_kfunc_ids)

static const struct btf_kfunc_id_set btfr_kfunc_set = {
	.owner = THIS_MODULE,
	.set = &btfr_kfunc_ids,
};

static int __init btfr_kfunc_init(void)
{
	int err;

	err = register_btf_kfunc_id_set(BPF_PROG_TYPE_TRACING, &btfr_kfunc_set);
	if (err) {
		pr_err("btfr_kfunc: register_btf_kfunc_id_set failed: %d\n", err);
		return err;
	}
	pr_info("btfr_kfunc: loaded, 2+3=%llu\n", btfr_kfunc_add(2, 3));
	return 0;
}

static void __exit btfr_kfunc_exit(void)
{
}

module_init(btfr_kfunc_init);
module_exit(btfr_kfunc_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: exposes kfuncs");
