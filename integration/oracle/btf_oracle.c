// SPDX-License-Identifier: GPL-2.0
/*
 * btf_oracle — the libbpf (>= 1.5) oracle for btfreconciled's tests.
 *
 * Built by vm/setup inside the trixie root filesystem against its libbpf 1.5
 * and installed there as /usr/local/bin/btf_oracle; run it with
 * `vm/chroot -- btf_oracle ...` (paths under the checkout, the cache root and
 * /tmp are the same inside the chroot as on the host).
 *
 * Inputs marked BTF may be an ELF file (.ko, vmlinux: the .BTF section, plus
 * .BTF.base for a distilled module) or a raw BTF blob (/sys/kernel/btf/..).
 * All outputs are raw BTF blobs (btf__raw_data): a split BTF is written
 * without its base, exactly like /sys/kernel/btf/<module>.
 *
 *   parse-split MOD BASE OUT
 *       btf__parse_split(MOD, BASE). A module with .BTF.base is relocated
 *       onto BASE by libbpf on the way in. Writes the split BTF to OUT.
 *   distill MOD BASE OUT_BASE OUT_SPLIT
 *       btf__parse_split(MOD, BASE) then btf__distill_base(): writes the
 *       distilled base (standalone) and the new split BTF (based on it).
 *   relocate SPLIT DISTILLED_BASE NEW_BASE OUT
 *       SPLIT parsed on DISTILLED_BASE (use '-' for DISTILLED_BASE to take
 *       the module's own .BTF.base), then btf__relocate(split, NEW_BASE).
 *       Writes the relocated split BTF (base = NEW_BASE).
 *   base-of MOD OUT
 *       writes the distilled base embedded in MOD (.BTF.base) as raw BTF.
 *   info BTF [BASE]
 *       prints "types=<n> start_id=<id> raw_size=<bytes>" (n = types of BTF
 *       itself, without its base; a module with .BTF.base and no BASE is
 *       parsed on its distilled base).
 *   --version
 *
 * Exit status: 0 success; 1 libbpf rejected the input or an I/O error (the
 * libbpf messages and "btf_oracle: <what>: <strerror>" go to stderr);
 * 2 usage error.  BTF_ORACLE_DEBUG=1 also prints libbpf's debug messages.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

static int debug;

static int print_fn(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG && !debug)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static int fail(const char *what, int err)
{
	if (err < 0)
		err = -err;
	fprintf(stderr, "btf_oracle: %s: %s\n", what, strerror(err ? err : EINVAL));
	return 1;
}

static struct btf *load(const char *path, struct btf *base)
{
	struct btf *btf = base ? btf__parse_split(path, base) : btf__parse(path, NULL);

	if (!btf) {
		int err = errno;
		char what[4096];

		snprintf(what, sizeof(what), "cannot parse %s%s", path,
			 base ? " as split BTF" : "");
		fail(what, err);
	}
	return btf;
}

static int write_raw(const struct btf *btf, const char *out)
{
	__u32 size = 0;
	const void *data = btf__raw_data(btf, &size);
	FILE *f;

	if (!data)
		return fail("btf__raw_data", errno);
	f = fopen(out, "wb");
	if (!f)
		return fail(out, errno);
	if (fwrite(data, 1, size, f) != size || fclose(f) != 0)
		return fail(out, errno);
	return 0;
}

static int cmd_parse_split(char **argv)
{
	struct btf *base, *split;
	int ret;

	base = load(argv[1], NULL);
	if (!base)
		return 1;
	split = load(argv[0], base);
	if (!split)
		return 1;
	ret = write_raw(split, argv[2]);
	btf__free(split);
	btf__free(base);
	return ret;
}

static int cmd_distill(char **argv)
{
	struct btf *base, *split, *new_base = NULL, *new_split = NULL;
	int err, ret;

	base = load(argv[1], NULL);
	if (!base)
		return 1;
	split = load(argv[0], base);
	if (!split)
		return 1;
	err = btf__distill_base(split, &new_base, &new_split);
	if (err)
		return fail("btf__distill_base", err);
	ret = write_raw(new_base, argv[2]) || write_raw(new_split, argv[3]);
	btf__free(new_split);
	btf__free(new_base);
	btf__free(split);
	btf__free(base);
	return ret;
}

static int cmd_relocate(char **argv)
{
	struct btf *dist = NULL, *split, *new_base;
	int err, ret;

	if (strcmp(argv[1], "-") != 0) {
		dist = load(argv[1], NULL);
		if (!dist)
			return 1;
		split = load(argv[0], dist);
	} else {
		/* ELF with .BTF.base and no base: libbpf parses the module on its
		 * own distilled base. */
		split = btf__parse(argv[0], NULL);
		if (!split)
			return fail("cannot parse module with its .BTF.base", errno);
		if (!btf__base_btf(split)) {
			fprintf(stderr, "btf_oracle: %s has no .BTF.base section\n", argv[0]);
			return 1;
		}
	}
	if (!split)
		return 1;
	new_base = load(argv[2], NULL);
	if (!new_base)
		return 1;
	err = btf__relocate(split, new_base);
	if (err)
		return fail("btf__relocate rejected the module", err);
	ret = write_raw(split, argv[3]);
	btf__free(split);
	btf__free(new_base);
	btf__free(dist);
	return ret;
}

static int cmd_base_of(char **argv)
{
	struct btf *split = btf__parse(argv[0], NULL);
	const struct btf *base;

	if (!split)
		return fail("cannot parse module", errno);
	base = btf__base_btf(split);
	if (!base) {
		fprintf(stderr, "btf_oracle: %s has no .BTF.base section\n", argv[0]);
		return 1;
	}
	return write_raw(base, argv[1]);
}

static int cmd_info(int argc, char **argv)
{
	struct btf *base = NULL, *btf;
	const struct btf *b;
	__u32 size = 0;
	const void *raw;

	if (argc > 1) {
		base = load(argv[1], NULL);
		if (!base)
			return 1;
	}
	btf = load(argv[0], base);
	if (!btf)
		return 1;
	raw = btf__raw_data(btf, &size);
	b = btf__base_btf(btf);
	/* start_id: first type id of this BTF (1 when standalone); types: how many
	 * types it holds itself (split part only); raw_size: btf__raw_data size. */
	printf("types=%u start_id=%u raw_size=%u\n",
	       btf__type_cnt(btf) - (b ? btf__type_cnt(b) : 1),
	       b ? btf__type_cnt(b) : 1, raw ? size : 0);
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: btf_oracle parse-split MOD BASE OUT\n"
		"       btf_oracle distill MOD BASE OUT_BASE OUT_SPLIT\n"
		"       btf_oracle relocate SPLIT DISTILLED_BASE|- NEW_BASE OUT\n"
		"       btf_oracle base-of MOD OUT\n"
		"       btf_oracle info BTF [BASE]\n"
		"       btf_oracle --version\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *cmd;

	debug = getenv("BTF_ORACLE_DEBUG") && *getenv("BTF_ORACLE_DEBUG") == '1';
	libbpf_set_print(print_fn);
	if (argc < 2)
		return usage();
	cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (!strcmp(cmd, "--version")) {
		printf("btf_oracle (libbpf %u.%u)\n", libbpf_major_version(),
		       libbpf_minor_version());
		return 0;
	}
	if (!strcmp(cmd, "parse-split") && argc == 3)
		return cmd_parse_split(argv);
	if (!strcmp(cmd, "distill") && argc == 4)
		return cmd_distill(argv);
	if (!strcmp(cmd, "relocate") && argc == 4)
		return cmd_relocate(argv);
	if (!strcmp(cmd, "base-of") && argc == 2)
		return cmd_base_of(argv);
	if (!strcmp(cmd, "info") && (argc == 1 || argc == 2))
		return cmd_info(argc, argv);
	return usage();
}
