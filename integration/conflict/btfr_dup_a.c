// SPDX-License-Identifier: GPL-2.0
/*
 * Conflict fixture a: `struct btfr_dup` with `x` first.  btfr_dup_a and btfr_dup_b both
 * define a struct of that name with different layouts, the case where a BTF holding both
 * modules (merged/all.btf) gives libbpf two candidates for one CO-RE relocation and it
 * refuses ("field offset ambiguity"), while the per-module merged file resolves it.
 *
 * Writing a number to /sys/module/btfr_dup_a/parameters/poke stores it in x and calls
 * btfr_dup_a_poke(&dup), a kprobe target (integration/conflict/dupread.bpf.c attaches to
 * btfr_dup_a_poke).  At load, x is 1111.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>

struct btfr_dup {
	u32 x;
	u32 y;
	u64 pad[2];
};

static struct btfr_dup btfr_dup_a = { .x = 1111, .y = 7 };

noinline int btfr_dup_a_poke(struct btfr_dup *d)
{
	/* keep the call and its argument: this is the kprobe's target */
	barrier();
	return d->x;
}

static int btfr_dup_a_poke_set(const char *val, const struct kernel_param *kp)
{
	u32 v;
	int err = kstrtou32(val, 0, &v);

	if (err)
		return err;
	WRITE_ONCE(btfr_dup_a.x, v);
	btfr_dup_a_poke(&btfr_dup_a);
	return 0;
}

static int btfr_dup_a_poke_get(char *buf, const struct kernel_param *kp)
{
	return sprintf(buf, "%u\n", READ_ONCE(btfr_dup_a.x));
}

static const struct kernel_param_ops btfr_dup_a_poke_ops = {
	.set = btfr_dup_a_poke_set,
	.get = btfr_dup_a_poke_get,
};
module_param_cb(poke, &btfr_dup_a_poke_ops, NULL, 0600);
MODULE_PARM_DESC(poke, "store a value in btfr_dup.x and call btfr_dup_a_poke()");

static int __init btfr_dup_a_init(void)
{
	pr_info("btfr_dup_a: loaded, x=%u\n", btfr_dup_a_poke(&btfr_dup_a));
	return 0;
}

static void __exit btfr_dup_a_exit(void)
{
}

module_init(btfr_dup_a_init);
module_exit(btfr_dup_a_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: struct btfr_dup, layout a");
