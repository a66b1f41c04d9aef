// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture (c): enums (signed, unsigned and a 64-bit one), ints of every width,
 * typedefs, bitfields, a vmlinux enum, and anonymous base types: atomic_t is a
 * typedef of an *anonymous* vmlinux struct, spinlock_t a typedef of a named
 * one, plus arrays of base types and an anonymous union.
 */
#include <linux/module.h>
#include <linux/types.h>
#include <linux/atomic.h>
#include <linux/spinlock.h>
#include <linux/hrtimer.h>

enum btfr_color {
	BTFR_RED = 0,
	BTFR_GREEN = 5,
	BTFR_BLUE = -1,
};

enum btfr_flags {
	BTFR_FLAG_A = 1U << 0,
	BTFR_FLAG_B = 1U << 31,
};

enum btfr_big {
	BTFR_BIG_SMALL = 1,
	BTFR_BIG_LARGE = 0x100000000ULL,
	BTFR_BIG_HUGE = 0xffffffff00000000ULL,
};

typedef unsigned long long btfr_u64_t;
typedef struct btfr_types_obj btfr_types_obj_t;
typedef int (*btfr_cb_t)(btfr_types_obj_t *obj, long arg);

struct btfr_types_obj {
	enum btfr_color color;
	enum btfr_flags flags;
	enum btfr_big big;
	enum hrtimer_restart restart;	/* an enum that lives in vmlinux */
	unsigned int flag_a : 1;
	unsigned int flag_b : 3;
	int signed_bits : 5;
	u64 wide_bits : 40;
	u8 small;
	s16 mid;
	u32 word;
	btfr_u64_t wide;
	long l;
	char name[16];
	atomic_t refs;			/* typedef of an anonymous vmlinux struct */
	atomic64_t refs64;
	spinlock_t lock;		/* typedef of a named vmlinux struct */
	unsigned long words[4];		/* array of a base type */
	unsigned short matrix[2][3];
	union {
		u32 as_u32;
		u8 as_bytes[4];
	};
	btfr_cb_t cb;
	const volatile int *cv_ptr;
};

btfr_types_obj_t btfr_types_global;

static int btfr_types_cb(btfr_types_obj_t *obj, long arg)
{
	return obj->signed_bits + (int)arg;
}

noinline enum btfr_big btfr_types_pick(btfr_types_obj_t *obj, enum btfr_color c)
{
	obj->color = c;
	return c == BTFR_BLUE ? BTFR_BIG_HUGE : BTFR_BIG_SMALL;
}
EXPORT_SYMBOL_GPL(btfr_types_pick);

static int __init btfr_types_init(void)
{
	btfr_types_obj_t *o = &btfr_types_global;

	spin_lock_init(&o->lock);
	atomic_set(&o->refs, 1);
	atomic64_set(&o->refs64, 1);
	o->flags = BTFR_FLAG_A;
	o->restart = HRTIMER_NORESTART;
	o->signed_bits = -3;
	o->wide_bits = 1ULL << 39;
	o->cb = btfr_types_cb;
	o->big = btfr_types_pick(o, BTFR_GREEN);
	pr_info("btfr_types: loaded, cb=%d big=%llx\n", o->cb(o, 1),
		(unsigned long long)o->big);
	return 0;
}

static void __exit btfr_types_exit(void)
{
	atomic_dec(&btfr_types_global.refs);
}

module_init(btfr_types_init);
module_exit(btfr_types_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("btfreconciled fixture: enums, ints, typedefs, bitfields, anonymous types");
