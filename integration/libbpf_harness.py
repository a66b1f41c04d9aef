"""A batch harness around libbpf >= 1.5 (btf__distill_base, btf__relocate) for parity tests
and the benchmark. It is compiled and run inside a Debian root filesystem (the libbpf there
needs its glibc): the trixie root for libbpf 1.5, the sid root for libbpf 1.7;
`build(rootfs_runner, dir, tag)` once, then run it in the same root.

Not used by the product itself: integration/test_libbpf_parity.py and bench/ import it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

C_SOURCE = r"""
// SPDX-License-Identifier: GPL-2.0
// btfr_libbpf: batch libbpf oracle for btfreconciled's parity tests and benchmark.
//   distill VMLINUX LIST OUTDIR     LIST: "name<TAB>raw split BTF on VMLINUX" per line.
//       btf__distill_base -> OUTDIR/name.base, OUTDIR/name.split; then that pair, parsed
//       back, btf__relocate()d onto VMLINUX -> OUTDIR/name.rel.  Prints "name<TAB>ok" or
//       "name<TAB>fail<TAB>stage<TAB>errno".
//   relocate VMLINUX LIST OUTDIR    LIST: "name<TAB>distilled base<TAB>split on it".
//       btf__relocate onto VMLINUX -> OUTDIR/name.rel; prints status like distill.
//   bench VMLINUX LIST ITERS        LIST like relocate.  For each module, ITERS times:
//       parse (untimed), btf__relocate (timed).  Prints
//       "name<TAB>split types<TAB>median ns<TAB>min ns".
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

static int quiet(enum libbpf_print_level l, const char *f, va_list ap) { return 0; }

static void *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	void *buf = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc(n ? n : 1);
		if (buf && fread(buf, 1, n, f) != (size_t)n) {
			free(buf);
			buf = NULL;
		}
		*len = n;
	}
	fclose(f);
	return buf;
}

static int dump(const struct btf *btf, const char *dir, const char *name, const char *ext)
{
	char path[4096];
	__u32 size;
	const void *data = btf__raw_data(btf, &size);
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.%s", dir, name, ext);
	f = fopen(path, "wb");
	if (!f || !data)
		return -1;
	if (fwrite(data, 1, size, f) != size) {
		fclose(f);
		return -1;
	}
	return fclose(f);
}

static int cmp_u64(const void *a, const void *b)
{
	__u64 x = *(const __u64 *)a, y = *(const __u64 *)b;
	return x < y ? -1 : x > y;
}

static __u64 now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	char line[8192];
	struct btf *vmlinux;
	FILE *list;
	int iters = 0;

	if (argc != 5)
		return 2;
	libbpf_set_print(getenv("BTFR_DEBUG") ? NULL : quiet);
	vmlinux = btf__parse(argv[2], NULL);
	if (!vmlinux) {
		fprintf(stderr, "cannot parse %s\n", argv[2]);
		return 1;
	}
	list = fopen(argv[3], "r");
	if (!list)
		return 1;
	if (!strcmp(argv[1], "bench"))
		iters = atoi(argv[4]);
	while (fgets(line, sizeof(line), list)) {
		char *name = strtok(line, "\t\n"), *a = strtok(NULL, "\t\n"), *b = strtok(NULL, "\t\n");

		if (!name || !a)
			continue;
		if (!strcmp(argv[1], "distill")) {
			struct btf *split = btf__parse_split(a, vmlinux), *nb = NULL, *ns = NULL;
			int err;

			if (!split) {
				printf("%s\tfail\tparse\t%d\n", name, errno);
				continue;
			}
			err = btf__distill_base(split, &nb, &ns);
			if (err) {
				printf("%s\tfail\tdistill\t%d\n", name, -err);
				btf__free(split);
				continue;
			}
			dump(nb, argv[4], name, "base");
			dump(ns, argv[4], name, "split");
			btf__free(ns);
			btf__free(nb);
			btf__free(split);
			// relocate what a module would carry: the pair parsed back from bytes
			// (btf__relocate() on the in-memory pair leaves btf__raw_data()'s
			// cached copy stale)
			{
				char bp[4096], sp[4096];
				struct btf *dist, *s2;

				snprintf(bp, sizeof(bp), "%s/%s.base", argv[4], name);
				snprintf(sp, sizeof(sp), "%s/%s.split", argv[4], name);
				dist = btf__parse(bp, NULL);
				s2 = dist ? btf__parse_split(sp, dist) : NULL;
				if (!s2)
					printf("%s\tfail\treparse\t%d\n", name, errno);
				else if ((err = btf__relocate(s2, vmlinux)))
					printf("%s\tfail\trelocate\t%d\n", name, -err);
				else if (dump(s2, argv[4], name, "rel"))
					printf("%s\tfail\twrite\t%d\n", name, errno);
				else
					printf("%s\tok\n", name);
				btf__free(s2);
				btf__free(dist);
			}
		} else if (!strcmp(argv[1], "relocate") && b) {
			struct btf *dist = btf__parse(a, NULL), *split;
			int err;

			split = dist ? btf__parse_split(b, dist) : NULL;
			if (!split) {
				printf("%s\tfail\tparse\t%d\n", name, errno);
				btf__free(dist);
				continue;
			}
			err = btf__relocate(split, vmlinux);
			if (err)
				printf("%s\tfail\trelocate\t%d\n", name, -err);
			else if (dump(split, argv[4], name, "rel"))
				printf("%s\tfail\twrite\t%d\n", name, errno);
			else
				printf("%s\tok\n", name);
			btf__free(split);
			btf__free(dist);
		} else if (iters > 0 && b) {
			size_t bl = 0, sl = 0;
			void *bd = slurp(a, &bl), *sd = slurp(b, &sl);
			__u64 *t = calloc(iters, sizeof(*t));
			int i, n = 0, types = -1;

			for (i = 0; bd && sd && i < iters; i++) {
				struct btf *dist = btf__new(bd, bl), *split;
				__u64 t0;

				split = dist ? btf__new_split(sd, sl, dist) : NULL;
				if (!split) {
					btf__free(dist);
					break;
				}
				if (types < 0)
					types = btf__type_cnt(split) - btf__type_cnt(dist);
				t0 = now_ns();
				if (btf__relocate(split, vmlinux) == 0)
					t[n++] = now_ns() - t0;
				btf__free(split);
				btf__free(dist);
			}
			if (n) {
				qsort(t, n, sizeof(*t), cmp_u64);
				unsigned long long med = t[n / 2], min = t[0];

				printf("%s\t%d\t%llu\t%llu\n", name, types, med, min);
			} else {
				printf("%s\t%d\tfail\n", name, types);
			}
			free(t);
			free(bd);
			free(sd);
		}
		fflush(stdout);
	}
	btf__free(vmlinux);
	return 0;
}
"""

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def build(run_in_chroot: Runner, cache_dir: Path, tag: str = "") -> Path:
    """Compile the harness inside the chroot (once per source version); returns its path,
    which is the same inside the chroot and on the host (the cache root is bind-mounted).
    `tag` names the root it is built in (e.g. "sid", against libbpf 1.7) so that builds
    against different libbpf versions do not share a file."""
    digest = hashlib.sha256(C_SOURCE.encode()).hexdigest()[:12]
    cache_dir.mkdir(parents=True, exist_ok=True)
    exe = cache_dir / f"btfr_libbpf-{tag + '-' if tag else ''}{digest}"
    if exe.exists():
        return exe
    src = cache_dir / f"btfr_libbpf-{digest}.c"
    src.write_text(C_SOURCE)
    tmp = cache_dir / f".btfr_libbpf-{digest}.tmp"
    p = run_in_chroot(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src), "-lbpf"])
    if p.returncode != 0:
        raise RuntimeError(f"building the libbpf harness failed:\n{p.stdout}{p.stderr}")
    tmp.rename(exe)
    return exe


def parse_status(out: str) -> dict[str, tuple[str, ...]]:
    """name -> ("ok",) or ("fail", stage, errno) from the harness's stdout."""
    res: dict[str, tuple[str, ...]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            res[parts[0]] = tuple(parts[1:])
    return res
