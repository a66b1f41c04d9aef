// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture (a): a module struct that embeds vmlinux structs *by value*:
 * list_head, work_struct and completion.  The distilled base must carry their
 * sizes, and relocation must check them (a size change breaks this module).
 */
#include <linux/module.h>
#include <linux/list.h>
#include <linux/workqueue.h>
#include <linux/completion.h>

struct btfr_embed_obj {
	struct list_head node;
	struct work_struct work;
	struct completion done;
	int value;
};

struct btfr_embed_obj btfr_embed_global;
static LIST_HEAD(btfr_embed_list);

static void btfr_embed_work_fn(struct work_struct *work)
{
	struct btfr_embed_obj *obj = container_of(work, struct btfr_embed_obj, work);

	obj->value++;
	complete(&obj->done);
}

noinline int btfr_embed_touch(struct btfr_embed_obj *obj, int delta)
{
	obj->value += delta;
	return obj->value;
}
EXPORT_SYMBOL_GPL(btfr_embed_touch);

static int __init btfr_embed_init(void)
{
	struct btfr_embed_obj *obj = &btfr_embed_global;

	INIT_LIST_HEAD(&obj->node);
	INIT_WORK(&obj->work, btfr_embed_work_fn);
	init_completion(&obj->done);
	list_add(&obj->node, &btfr_embed_list);
	schedule_work(&obj->work);
	wait_for_completion(&obj->done);
	pr_info("btfr_embed: loaded, value=%d\n", btfr_embed_touch(obj, 1));
	return 0;
}

static void __exit btfr_embed_exit(void)
{
	list_del(&btfr_embed_global.node);
	flush_work(&btfr_embed_global.work);
}

module_init(btfr_embed_init);
module_exit(btfr_embed_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: embeds vmlinux structs by value");
