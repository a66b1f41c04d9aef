// SPDX-License-Identifier: GPL-2.0
// libbpf_bench: the C side of bench/bench_whole.py, built in the trixie root against libbpf 1.5.
//
//   split VMLINUX ITERS LIST
//       vmlinux parsed once (btf__parse, untimed).  For each path in LIST (one per line):
//       one untimed warm-up, then ITERS timed calls of btf__parse_split(path, vmlinux) (libbpf
//       >= 1.5: read the ELF, parse .BTF on .BTF.base, validate, btf__relocate onto vmlinux);
//       btf__free outside the timer.  Prints "path<TAB>median ns<TAB>min ns<TAB>types" or
//       "path<TAB>fail<TAB>errno".
//   batch VMLINUX DIR
//       What `btfreconcilectl check DIR` does, in one process: btf__parse(VMLINUX), then
//       btf__parse_split of every *.ko under DIR (nftw, sorted like the CLI does not matter
//       for time).  Prints "<n> modules: <ok> ok, <fail> failed".  Timed from outside.
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

static int quiet(enum libbpf_print_level l, const char *f, va_list ap) { return 0; }

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;

	return x < y ? -1 : x > y;
}

static struct btf *vmlinux;
static int n_ok, n_fail;

static int one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	size_t n = strlen(path);
	struct btf *b;

	if (flag != FTW_F || n < 3 || strcmp(path + n - 3, ".ko"))
		return 0;
	b = btf__parse_split(path, vmlinux);
	if (!b) {
		n_fail++;
		return 0;
	}
	n_ok++;
	btf__free(b);
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(quiet);
	if (argc == 4 && !strcmp(argv[1], "batch")) {
		vmlinux = btf__parse(argv[2], NULL);
		if (!vmlinux) {
			fprintf(stderr, "%s: btf__parse failed: %d\n", argv[2], -errno);
			return 2;
		}
		if (nftw(argv[3], one, 64, FTW_PHYS))
			return 2;
		printf("%d modules: %d ok, %d failed\n", n_ok + n_fail, n_ok, n_fail);
		btf__free(vmlinux);
		return n_fail ? 1 : 0;
	}
	if (argc == 5 && !strcmp(argv[1], "split")) {
		int iters = atoi(argv[3]);
		unsigned long long *t = calloc(iters > 0 ? iters : 1, sizeof(*t));
		char line[4096];
		FILE *list = fopen(argv[4], "r");

		vmlinux = btf__parse(argv[2], NULL);
		if (!vmlinux || !list || !t || iters < 1) {
			fprintf(stderr, "usage or input error\n");
			return 2;
		}
		while (fgets(line, sizeof(line), list)) {
			struct btf *b;
			int types, i;

			line[strcspn(line, "\n")] = 0;
			if (!line[0])
				continue;
			b = btf__parse_split(line, vmlinux);  /* warm-up, untimed */
			if (!b) {
				printf("%s\tfail\t%d\n", line, -errno);
				continue;
			}
			types = btf__type_cnt(b) - btf__type_cnt(vmlinux);
			btf__free(b);
			for (i = 0; i < iters; i++) {
				unsigned long long t0 = now_ns();

				b = btf__parse_split(line, vmlinux);
				t[i] = now_ns() - t0;
				btf__free(b);
			}
			qsort(t, iters, sizeof(*t), cmp_u64);
			printf("%s\t%llu\t%llu\t%d\n", line, t[iters / 2], t[0], types);
		}
		fflush(stdout);
		btf__free(vmlinux);
		return 0;
	}
	fprintf(stderr, "usage: libbpf_bench split VMLINUX ITERS LIST | batch VMLINUX DIR\n");
	return 2;
}
