// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture (e): the loader fixture.  A module struct of its own whose field a CO-RE
 * program reads (examples/modread): `counter` sits behind an embedded list_head and
 * padding, so reading it needs this module's BTF, not a guess.
 *
 * Writing a number to /sys/module/btfr_loader/parameters/poke stores it in
 * btfr_loader_state.counter and calls btfr_loader_poke(&state), the function the
 * example attaches its kprobe to.  At load, counter is BTFR_LOADER_INITIAL.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/list.h>
#include <linux/kernel.h>

#define BTFR_LOADER_INITIAL 4242

struct btfr_loader_state {
	struct list_head node;
	u64 pad[5];
	u32 flags;
	u32 counter;
	char tag[16];
};

static struct btfr_loader_state btfr_loader_state = {
	.counter = BTFR_LOADER_INITIAL,
	.tag = "btfr_loader",
};

noinline int btfr_loader_poke(struct btfr_loader_state *s)
{
	/* keep the call and its argument: this is the kprobe's target */
	barrier();
	return s->counter;
}

static int btfr_loader_poke_set(const char *val, const struct kernel_param *kp)
{
	u32 v;
	int err = kstrtou32(val, 0, &v);

	if (err)
		return err;
	WRITE_ONCE(btfr_loader_state.counter, v);
	btfr_loader_poke(&btfr_loader_state);
	return 0;
}

static int btfr_loader_poke_get(char *buf, const struct kernel_param *kp)
{
	return sprintf(buf, "%u\n", READ_ONCE(btfr_loader_state.counter));
}

static const struct kernel_param_ops btfr_loader_poke_ops = {
	.set = btfr_loader_poke_set,
	.get = btfr_loader_poke_get,
};
module_param_cb(poke, &btfr_loader_poke_ops, NULL, 0600);
MODULE_PARM_DESC(poke, "store a value in btfr_loader_state.counter and call btfr_loader_poke()");

static int __init btfr_loader_init(void)
{
	INIT_LIST_HEAD(&btfr_loader_state.node);
	pr_info("btfr_loader: loaded, counter=%u\n", btfr_loader_poke(&btfr_loader_state));
	return 0;
}

static void __exit btfr_loader_exit(void)
{
}

module_init(btfr_loader_init);
module_exit(btfr_loader_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: a module struct read by a CO-RE program");
