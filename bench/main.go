//go:build linux

// Command bench measures capnshm's RPC engine against go-capnp's rpc.Conn
// and Cap'n Proto's C++ EZ-RPC, over shared memory, unix sockets, TCP on
// loopback and in-process pipes, with client and server in separate
// processes, and against the floors of this machine measured in the same
// run. It prints a table and the targets of issue 11 with their status,
// and writes a report directory.
//
//	go run ./bench                     # the whole suite, about 5 minutes
//	go run ./bench -quick              # the whole suite in under a minute
//	go run ./bench -quick -json        # one JSON document on stdout
//	go run ./bench -workloads ping,echo -transports engine-shm,gocapnp -sizes 64,1MiB
//	go run ./bench -workloads ping -rate 20000   # open loop at 20k calls/s
//
// Transports (-transports; "engine", "gocapnp" and "cpp-ezrpc" name each
// group, and shm, shm-spin, shm-block, unix, tcp, pipe the engine's):
//
//	engine-shm, engine-shm-spin, engine-shm-block   capnshm's engine over shared memory,
//	                                                adaptive, busy-spin and block wait strategy
//	engine-unix, engine-tcp                         capnshm's engine over its stream transport
//	engine-pipe, gocapnp-pipe                       both ends in this process, over net.Pipe
//	engine-mem, gocapnp-mem                         both ends in this process, over each one's own
//	                                                in-process pipe (rpc.Pipe, transport.NewPipe)
//	gocapnp-shm                                     go-capnp's rpc.Conn over capnshm's shm transport
//	gocapnp-unix, gocapnp-tcp                       go-capnp's rpc.Conn over its own stream transport
//	cpp-ezrpc-unix, cpp-ezrpc-tcp                   C++ EZ-RPC (cpp/peer.c++, built with g++ and
//	                                                libcapnp-dev when present; "not measured" otherwise)
//
// Workloads (-workloads): floors (spin, eventfd, memcpy), ring (the raw
// ring per wait strategy), ping, echo (-sizes), inplace (a request built
// in place), stream (-stream-total in 1 MiB `-> stream` calls), clients
// (-clients connections pinging at once: calls/s) and idle (the CPU of a
// connected pair). The C++ peer runs ping and echo only.
//
// The report directory (-out) holds report.md (the machine, the targets
// marked met or missed with a closing note on each miss, every result),
// results.json (what -json prints), bench.txt (Go benchmark format) and
// SVG plots. To compare two runs:
//
//	go run ./bench -out old && ...change... && go run ./bench -out new
//	benchstat old/bench.txt new/bench.txt
//
// (benchstat: go install golang.org/x/perf/cmd/benchstat@latest). A run
// holds one sample of each figure; for confidence intervals concatenate
// the bench.txt of several runs into each side
// (cat a1/bench.txt a2/bench.txt a3/bench.txt > old.txt).
// On a terminal a progress bar covers the whole run; otherwise each step
// prints a line on stderr.
//
// The program re-executes itself as the peer: "-child server" serves
// echoproto.Echo on a fresh address for one transport; "-child spin",
// "-child eventfd" and "-child ring" answer the floor and raw-ring
// ping-pongs of internal/pingpong.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Every workload, in the order they run.
var allWorkloads = []string{"floors", "ring", "ping", "echo", "inplace", "stream", "clients", "idle"}

type config struct {
	workloads   []string
	transports  []string
	sizes       []int64
	duration    time.Duration
	rounds      int
	idle        time.Duration
	streamTotal int64
	inplaceSize int64
	clients     []int
	rate        float64
	out         string
	json        bool
	quick       bool
}

func (c *config) has(workload string) bool { return slices.Contains(c.workloads, workload) }

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		workloads  = fs.String("workloads", strings.Join(allWorkloads, ","), "comma list of workloads: "+strings.Join(allWorkloads, ","))
		transports = fs.String("transports", strings.Join(allTransports, ","), "comma list of transports: "+strings.Join(allTransports, ",")+"; or engine, gocapnp, cpp-ezrpc for a group")
		sizes      = fs.String("sizes", "64,4KiB,64KiB,1MiB,16MiB,64MiB", "echo message sizes (B, KiB, MiB suffixes)")
		duration   = fs.Duration("duration", time.Second, "time per latency/throughput workload (per size, per client count)")
		rounds     = fs.Int("rounds", 200_000, "round trips of each floor and raw-ring ping-pong")
		idle       = fs.Duration("idle", 10*time.Second, "how long to measure an idle connected pair's CPU, per transport (0 skips idle)")
		stream     = fs.String("stream-total", "1GiB", "bytes to stream in 1 MiB chunks")
		inplace    = fs.String("inplace-size", "64MiB", "size of the request built in place")
		clients    = fs.String("clients", "1,2,8", "concurrent client counts of the clients workload (1 is the ping workload)")
		rate       = fs.Float64("rate", 0, "open loop: calls per second for ping and echo, latency measured from each call's intended send time, corrected for coordinated omission; the sender yield-spins up to 2 ms before each send (0: closed loop)")
		out        = fs.String("out", "bench-report", "report directory (empty: no report)")
		jsonOut    = fs.Bool("json", false, "print exactly one JSON document on stdout (progress goes to stderr)")
		quick      = fs.Bool("quick", false, "the whole suite in under 60 s (for CI): 100 ms per measurement, 20000 rounds, 1 s idle, 128 MiB streamed, 1 and 8 clients")
		role       = fs.String("child", "", "internal: run as the peer (server, spin, eventfd, ring)")
		transport  = fs.String("transport", "", "internal: the transport the server child serves")
		strategy   = fs.Int("strategy", 0, "internal: the ring child's wait strategy")
		regionSize = fs.Int("region-size", 0, "internal: the ring child's region size")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *role != "" {
		if err := runChild(*role, *transport, *rounds, *strategy, *regionSize); err != nil {
			fmt.Fprintln(stderr, "bench child:", err)
			return 1
		}
		return 0
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := &config{rate: *rate, out: *out, json: *jsonOut, quick: *quick, duration: *duration, rounds: *rounds, idle: *idle}
	if *quick {
		// Only what the user did not set explicitly.
		if !set["duration"] {
			cfg.duration = 100 * time.Millisecond
		}
		if !set["rounds"] {
			cfg.rounds = 20_000
		}
		if !set["idle"] {
			cfg.idle = time.Second
		}
		if !set["stream-total"] {
			*stream = "128MiB"
		}
		if !set["clients"] {
			*clients = "1,8" // 8 is issue 11's target
		}
	}
	var err error
	if cfg.workloads, err = parseList(*workloads, allWorkloads); err != nil {
		fmt.Fprintln(stderr, "bench: -workloads:", err)
		return 2
	}
	if cfg.transports, err = parseTransports(*transports); err != nil {
		fmt.Fprintln(stderr, "bench: -transports:", err)
		return 2
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := parseSize(s)
		if err != nil || n <= 0 || n >= 1<<29 {
			fmt.Fprintf(stderr, "bench: -sizes: bad size %q (1 B to 512 MiB)\n", s)
			return 2
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	if slices.ContainsFunc(cfg.transports, func(t string) bool { return strings.HasPrefix(t, implCpp) }) && slices.Max(cfg.sizes) > cppMaxEcho && cfg.has("echo") {
		fmt.Fprintf(stderr, "bench: -sizes: %s is over the C++ peer's largest echo (%s): leave out the cpp-ezrpc transports or that size\n", sizeName(slices.Max(cfg.sizes)), sizeName(cppMaxEcho))
		return 2
	}
	if cfg.streamTotal, err = parseSize(*stream); err != nil || cfg.streamTotal <= 0 {
		fmt.Fprintf(stderr, "bench: -stream-total: bad size %q\n", *stream)
		return 2
	}
	if cfg.inplaceSize, err = parseSize(*inplace); err != nil || cfg.inplaceSize <= 0 || cfg.inplaceSize >= 1<<29 {
		fmt.Fprintf(stderr, "bench: -inplace-size: bad size %q\n", *inplace)
		return 2
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 256 {
			fmt.Fprintf(stderr, "bench: -clients: bad count %q\n", s)
			return 2
		}
		cfg.clients = append(cfg.clients, n)
	}
	if cfg.idle <= 0 {
		cfg.workloads = slices.DeleteFunc(cfg.workloads, func(w string) bool { return w == "idle" })
	}

	if len(cfg.workloads) == 0 || len(plan(cfg)) == 0 {
		fmt.Fprintf(stderr, "bench: nothing to measure: workloads %v on transports %v\n", cfg.workloads, cfg.transports)
		return 2
	}

	start := time.Now()
	rep, err := run(context.Background(), cfg, stderr, isTerminal(stderr))
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	rep.Elapsed = time.Since(start).Round(time.Millisecond).String()
	rep.Targets = targets(rep)
	if cfg.out != "" {
		if err := writeReport(cfg.out, rep); err != nil {
			fmt.Fprintln(stderr, "bench: writing the report:", err)
			return 1
		}
		fmt.Fprintf(stderr, "report written to %s/ (%s)\n", cfg.out, strings.Join(reportFiles, ", "))
	}
	if cfg.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		return 0
	}
	printTable(stdout, rep)
	fmt.Fprintln(stdout)
	printTargets(stdout, rep.Targets)
	fmt.Fprintf(stdout, "\ntotal %s\n", rep.Elapsed)
	return 0
}

func parseList(s string, all []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(all, f) {
			return nil, fmt.Errorf("unknown %q (want some of %s)", f, strings.Join(all, ","))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	// Keep the canonical order.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	return out, nil
}

// parseSize parses 64, 4KiB, 16MiB, 1GiB (also K, M, G, KB, MB, GB as powers of two).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("negative size")
	}
	return n * mult, nil
}

// sizeName formats a byte count as the flags take it.
func sizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
