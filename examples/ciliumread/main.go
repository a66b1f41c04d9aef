// SPDX-License-Identifier: GPL-2.0

// ciliumread: examples/modread's CO-RE kprobe loaded with cilium/ebpf instead of libbpf.
//
// It embeds modread.bpf.o (a kprobe on btfr_loader_poke() whose program reads
// btfr_loader_state.counter through a CO-RE relocation) and loads it with
// ebpf.CollectionOptions.Programs.KernelTypes = btf.LoadSpec(--btf FILE): cilium/ebpf's
// one door for CO-RE target types, as btf_custom_path is libbpf's.  btfreconciled's merged
// BTF (the running vmlinux followed by the reconciled module) is such a file.
//
// Without --btf, KernelTypes stays nil and cilium/ebpf relocates against the kernel's
// vmlinux BTF only: the 0.11 that Debian trixie packages never looks at module BTF
// (/sys/kernel/btf/<module>), so the module's struct is not found, the relocation is
// poisoned (call 0xbad2310) and the kernel's verifier rejects the program.  That is the
// negative control the VM tests run.
//
// Exit status: 0 the counter was read; 1 no BTF file, load/attach failure or no hit
// before --timeout (one line on stderr); 2 usage.
package main

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// The same object modread loads (the Makefile copies it here): one program, one map, and
// a layout proved by libbpf — so a difference between the two loaders is the loader's.
//
//go:embed modread.bpf.o
var bpfObject []byte

const (
	progName = "modread_poke" // SEC("kprobe/btfr_loader_poke") in modread.bpf.c
	mapName  = "events"       // its BPF_MAP_TYPE_RINGBUF
	symbol   = "btfr_loader_poke"
	module   = "btfr_loader"
)

const usageText = `usage: ciliumread [--btf FILE] [--timeout SEC]

Load examples/modread's CO-RE kprobe with cilium/ebpf, attach it to
btfr_loader_poke(), print 'attached', then 'counter=<value>' and
'offset=<byte offset cilium/ebpf resolved>' at the first hit, and exit.

  --btf FILE     CO-RE target types from FILE, a standalone BTF
                 (ProgramOptions.KernelTypes), e.g. the file
                 ` + "`btfreconcilectl path --merged btfr_loader`" + ` prints
                 (default: none, cilium/ebpf uses the kernel's vmlinux BTF)
  --timeout SEC  give up when nothing hit within SEC seconds
                 (default 60; 0 waits forever)

Exit status: 0 counter read; 1 no BTF file, load/attach failure or timeout; 2 usage.
`

// event mirrors struct modread_event (modread.h): two native-endian __u32.
type event struct {
	Counter uint32
	Offset  uint32
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "ciliumread: "+format+"\n", args...)
	return 1
}

func usageError(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "ciliumread: "+format+" (see ciliumread --help)\n", args...)
	return 2
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fl := flag.NewFlagSet("ciliumread", flag.ContinueOnError)
	// flag's own messages are two lines and a usage dump: ours is one line
	fl.SetOutput(io.Discard)
	btfFile := fl.String("btf", "", "")
	timeoutArg := fl.String("timeout", "60", "")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(usageText)
			return 0
		}
		return usageError("%v", err)
	}
	if fl.NArg() > 0 {
		return usageError("unexpected argument '%s'", fl.Arg(0))
	}
	timeout, err := strconv.ParseFloat(*timeoutArg, 64)
	if err != nil || timeout < 0 {
		return usageError("--timeout: not a number of seconds: '%s'", *timeoutArg)
	}
	btfGiven := false
	fl.Visit(func(f *flag.Flag) { btfGiven = btfGiven || f.Name == "btf" })
	if btfGiven && *btfFile == "" {
		return usageError("empty --btf argument")
	}

	var kernelTypes *btf.Spec
	target := "the kernel's vmlinux BTF"
	if btfGiven {
		target = *btfFile
		kernelTypes, err = btf.LoadSpec(*btfFile)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				// "open FILE: ..." from os.Open: say it the way modread does
				return fail("%s: %v", *btfFile, pe.Err)
			}
			return fail("%s: not a BTF file: %v", *btfFile, err)
		}
	}

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; a no-op on newer ones.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fail("cannot lift RLIMIT_MEMLOCK: %v", err)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(bpfObject))
	if err != nil {
		return fail("cannot read the embedded BPF object: %v", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{KernelTypes: kernelTypes},
	})
	if err != nil {
		// cilium/ebpf's error already ends with the verifier's last line
		return fail("cannot load the BPF program (CO-RE against %s): %v", target, err)
	}
	defer coll.Close()
	prog, events := coll.Programs[progName], coll.Maps[mapName]
	if prog == nil || events == nil {
		return fail("the embedded BPF object has no program %s or map %s", progName, mapName)
	}
	kp, err := link.Kprobe(symbol, prog, nil)
	if err != nil {
		return fail("cannot attach the kprobe to %s (is %s loaded?): %v", symbol, module, err)
	}
	defer kp.Close()
	rd, err := ringbuf.NewReader(events)
	if err != nil {
		return fail("ring buffer: %v", err)
	}
	defer rd.Close()
	fmt.Println("attached")

	// A signal closes the reader, which ends a blocked Read with ringbuf.ErrClosed.
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-interrupted
		rd.Close()
	}()
	if timeout > 0 {
		rd.SetDeadline(time.Now().Add(time.Duration(timeout * float64(time.Second))))
	}
	for {
		rec, err := rd.Read()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fail("%s did not run within %g s", symbol, timeout)
		case errors.Is(err, ringbuf.ErrClosed):
			return fail("interrupted before %s ran", symbol)
		case err != nil:
			return fail("ring buffer read: %v", err)
		}
		var ev event
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			continue // a short record is not ours
		}
		fmt.Printf("counter=%d\noffset=%d\n", ev.Counter, ev.Offset)
		return 0
	}
}
