// SPDX-License-Identifier: GPL-2.0
/*
 * modread — a real libbpf loader whose CO-RE program reads a kernel module's struct.
 *
 * It attaches modread.bpf.c's kprobe to btfr_loader_poke() (fixture module btfr_loader)
 * and prints btfr_loader_state.counter the first time the function runs.  Reading that
 * field needs the module's BTF: libbpf normally takes it from /sys/kernel/btf/btfr_loader,
 * which a kernel that rejected the module's BTF (6.1 with a .BTF.base module) does not
 * have.  libbpf's only other door is bpf_object_open_opts.btf_custom_path, ONE standalone
 * BTF file that replaces the kernel's BTF for CO-RE — which is what btfreconciled's
 * merged BTF (vmlinux + the reconciled module) is for.  By default modread asks
 * `btfreconcilectl path --merged btfr_loader` for that file, as a loader integrating with
 * btfreconciled would.
 *
 * Exit status: 0 the counter was read; 1 no BTF to use, load/attach failed (libbpf's own
 * messages precede the one-line reason on stderr) or no hit before --timeout; 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/libbpf.h>

#include "modread.h"
#include "modread.skel.h"

#define MODULE_NAME "btfr_loader"
#define CTL "btfreconcilectl"

static const char usage_text[] =
	"usage: modread [--btf FILE | --module-btf-from-ctl MODULE | --kernel-btf]\n"
	"               [--timeout SEC] [--verbose]\n"
	"\n"
	"Attach a kprobe to btfr_loader_poke() whose CO-RE program reads\n"
	"btfr_loader_state.counter, print 'attached', then 'counter=<value>' and\n"
	"'offset=<byte offset libbpf resolved>' at the first hit, and exit.\n"
	"\n"
	"Where libbpf finds the module's BTF for the CO-RE relocation:\n"
	"  (default)                   --module-btf-from-ctl " MODULE_NAME "\n"
	"  --module-btf-from-ctl MOD   the file `" CTL " path --merged MOD` prints\n"
	"                              (btfreconciled's merged vmlinux+module BTF)\n"
	"  --btf FILE                  FILE, a standalone BTF (btf_custom_path)\n"
	"  --kernel-btf                no custom BTF: the kernel's own vmlinux and module BTF\n"
	"  --timeout SEC               give up when nothing hit within SEC seconds\n"
	"                              (default 60; 0 waits forever)\n"
	"  -v, --verbose               also print libbpf's debug messages\n"
	"\n"
	"Exit status: 0 counter read; 1 no BTF, load/attach failure or timeout; 2 usage.\n";

static int verbose;
static volatile sig_atomic_t stopping;
static int got_event;
static struct modread_event event;

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("modread: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see modread --help)\n", stderr);
	exit(2);
}

static int print_fn(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG && !verbose)
		return 0;
	/* libbpf's CO-RE and verifier messages are the diagnosis: keep them on stderr */
	return vfprintf(stderr, fmt, ap);
}

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

/* Last non-empty line of a captured stream, without its newline. */
static void last_line(FILE *f, char *buf, size_t size)
{
	char line[1024];

	buf[0] = '\0';
	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (line[0])
			snprintf(buf, size, "%s", line);
	}
}

/*
 * Run `btfreconcilectl path --merged MODULE` and put the path it prints into `out`.
 * Its stdout and stderr go to temporary files (not pipes: nothing to deadlock on).
 * Returns 0, or 1 after printing one line saying why there is no file to use.
 */
static int btf_from_ctl(const char *module, char *out, size_t size)
{
	FILE *o = tmpfile(), *e = tmpfile();
	char reason[1024];
	int status;
	pid_t pid;

	if (!o || !e) {
		fprintf(stderr, "modread: temporary file: %s\n", strerror(errno));
		return 1;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "modread: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		dup2(fileno(o), STDOUT_FILENO);
		dup2(fileno(e), STDERR_FILENO);
		execlp(CTL, CTL, "path", "--merged", module, (char *)NULL);
		fprintf(stderr, "cannot run " CTL ": %s", strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, "modread: waitpid: %s\n", strerror(errno));
			return 1;
		}
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		last_line(e, reason, sizeof(reason));
		if (!reason[0])
			snprintf(reason, sizeof(reason), "exit status %d, no message",
				 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		fprintf(stderr, "modread: no merged BTF for %s: %s\n", module, reason);
		return 1;
	}
	last_line(o, out, size);
	fclose(o);
	fclose(e);
	if (!out[0]) {
		fprintf(stderr, "modread: no merged BTF for %s: " CTL " printed no path\n", module);
		return 1;
	}
	return 0;
}

static int on_event(void *ctx, void *data, size_t len)
{
	(void)ctx;
	if (len < sizeof(event) || got_event)
		return 0;
	memcpy(&event, data, sizeof(event));
	got_event = 1;
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "btf", required_argument, NULL, 'b' },
		{ "module-btf-from-ctl", required_argument, NULL, 'm' },
		{ "kernel-btf", no_argument, NULL, 'k' },
		{ "timeout", required_argument, NULL, 't' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *btf_file = NULL, *ctl_module = NULL;
	char btf_path[PATH_MAX];
	double timeout = 60, deadline;
	int kernel_btf = 0, sources = 0, opt, err;
	struct modread_bpf *skel = NULL;
	struct ring_buffer *rb = NULL;
	struct sigaction sa = { .sa_handler = on_signal };
	char *end;

	opterr = 0;	/* one line of ours instead of getopt's plus ours */
	while ((opt = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (opt) {
		case 'b': btf_file = optarg; sources++; break;
		case 'm': ctl_module = optarg; sources++; break;
		case 'k': kernel_btf = 1; sources++; break;
		case 't':
			errno = 0;
			timeout = strtod(optarg, &end);
			if (errno || end == optarg || *end || timeout < 0)
				usage_error("--timeout: not a number of seconds: '%s'", optarg);
			break;
		case 'v': verbose = 1; break;
		case 'h': fputs(usage_text, stdout); return 0;
		case ':': usage_error("option '%s' needs an argument", argv[optind - 1]); break;
		default: usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (sources > 1)
		usage_error("--btf, --module-btf-from-ctl and --kernel-btf exclude each other");
	if ((btf_file && !btf_file[0]) || (ctl_module && !ctl_module[0]))
		usage_error("empty --btf or --module-btf-from-ctl argument");

	if (btf_file) {
		snprintf(btf_path, sizeof(btf_path), "%s", btf_file);
	} else if (!kernel_btf) {
		if (btf_from_ctl(ctl_module ? ctl_module : MODULE_NAME, btf_path, sizeof(btf_path)))
			return 1;
	}
	if (!kernel_btf && access(btf_path, R_OK) != 0) {
		fprintf(stderr, "modread: %s: %s\n", btf_path, strerror(errno));
		return 1;
	}

	libbpf_set_print(print_fn);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	LIBBPF_OPTS(bpf_object_open_opts, open_opts,
		    .btf_custom_path = kernel_btf ? NULL : btf_path);
	skel = modread_bpf__open_opts(&open_opts);
	if (!skel) {
		fprintf(stderr, "modread: cannot open the BPF object: %s\n", strerror(errno));
		return 1;
	}
	err = modread_bpf__load(skel);
	if (err) {
		fprintf(stderr, "modread: cannot load the BPF program (CO-RE against %s): %s\n",
			kernel_btf ? "the kernel's BTF" : btf_path, strerror(-err));
		goto out;
	}
	err = modread_bpf__attach(skel);
	if (err) {
		fprintf(stderr, "modread: cannot attach the kprobe to btfr_loader_poke "
			"(is " MODULE_NAME " loaded?): %s\n", strerror(-err));
		goto out;
	}
	rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
	if (!rb) {
		err = -errno;
		fprintf(stderr, "modread: ring buffer: %s\n", strerror(errno));
		goto out;
	}
	printf("attached\n");
	fflush(stdout);

	deadline = now() + timeout;
	while (!got_event && !stopping) {
		int ms = 1000;

		if (timeout > 0) {
			double left = deadline - now();

			if (left <= 0)
				break;
			if (left < 1)
				ms = (int)(left * 1000) + 1;
		}
		err = ring_buffer__poll(rb, ms);
		if (err < 0 && err != -EINTR) {
			fprintf(stderr, "modread: ring buffer poll: %s\n", strerror(-err));
			goto out;
		}
	}
	if (got_event) {
		printf("counter=%u\noffset=%u\n", event.counter, event.offset);
		fflush(stdout);
		err = 0;
	} else if (stopping) {
		fprintf(stderr, "modread: interrupted before btfr_loader_poke ran\n");
		err = -EINTR;
	} else {
		fprintf(stderr, "modread: btfr_loader_poke did not run within %g s\n", timeout);
		err = -ETIMEDOUT;
	}
out:
	ring_buffer__free(rb);
	modread_bpf__destroy(skel);
	return err ? 1 : 0;
}
