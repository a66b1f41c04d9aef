// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture (b): reaches vmlinux structs only through pointers
 * (task_struct, sk_buff, file).  No vmlinux struct is embedded by value, so
 * relocation of this module does not depend on those structs' sizes.
 */
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/skbuff.h>
#include <linux/fs.h>

struct btfr_ptr_obj {
	struct task_struct *task;
	struct sk_buff *skb;
	struct file *file;
	struct btfr_ptr_obj *next;
	unsigned long cookie;
};

struct btfr_ptr_obj btfr_ptr_global;

noinline unsigned int btfr_ptr_skb_len(const struct sk_buff *skb)
{
	return skb ? skb->len : 0;
}
EXPORT_SYMBOL_GPL(btfr_ptr_skb_len);

noinline struct task_struct *btfr_ptr_owner(struct btfr_ptr_obj *obj)
{
	return obj ? obj->task : NULL;
}
EXPORT_SYMBOL_GPL(btfr_ptr_owner);

static int __init btfr_ptr_init(void)
{
	btfr_ptr_global.task = current;
	btfr_ptr_global.skb = NULL;
	btfr_ptr_global.file = NULL;
	btfr_ptr_global.next = &btfr_ptr_global;
	btfr_ptr_global.cookie = 0xb7f;
	pr_info("btfr_ptr: loaded by pid %d, skb len %u, owner %s\n",
		task_pid_nr(btfr_ptr_owner(&btfr_ptr_global)),
		btfr_ptr_skb_len(btfr_ptr_global.skb),
		btfr_ptr_owner(&btfr_ptr_global) ? "set" : "unset");
	return 0;
}

static void __exit btfr_ptr_exit(void)
{
	btfr_ptr_global.task = NULL;
}

module_init(btfr_ptr_init);
module_exit(btfr_ptr_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: vmlinux structs through pointers only");
