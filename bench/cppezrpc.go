//go:build linux

package main

// C++ EZ-RPC, measured: the bench's C++ peer (cpp/peer.c++), built from
// the bench's own schema with the installed Cap'n Proto C++ library, runs
// as server and as client over a unix socket and over TCP on loopback.
//
//	measureCppEzRpc(ctx, []string{"ping", "echo"}, []int64{64, 16 << 20})
//
// builds the peer (or takes it from the cache, see buildCppPeer), and for
// each transport starts "peer server ADDR", runs "peer client ADDR
// WORKLOAD N SIZE" once per workload and size, and returns what each
// client printed. Without capnp, g++, pkg-config or libcapnp-dev it
// returns an error wrapping errNotMeasured that names what is missing.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed cpp/peer.c++
var cppPeerSource []byte

// errNotMeasured is wrapped by the error of a measurement that could not be
// made on this machine (a tool or library missing), as opposed to one that
// failed.
var errNotMeasured = errors.New("not measured")

// cppTransports are the transports the C++ peer is measured on, in order.
var cppTransports = []string{"unix", "tcp"}

// measureCppEzRpc measures C++ EZ-RPC's ping and echo (workloads "ping" and
// "echo", the latter at each of sizes) over a unix socket and over TCP on
// loopback, with about a second of calls per measurement (cppCallsFor).
// The bench's run does the same step by step (runner.cpp).
func measureCppEzRpc(ctx context.Context, workloads []string, sizes []int64) ([]Result, error) {
	return measureCppEzRpcCounts(ctx, cppTransports, workloads, sizes, func(w string, size int64) int {
		return cppCallsFor(time.Second, w, size)
	})
}

// measureCppEzRpcCounts is measureCppEzRpc on the given transports (of
// cppTransports), making calls(workload, size) calls per measurement.
func measureCppEzRpcCounts(ctx context.Context, transports, workloads []string, sizes []int64, calls func(string, int64) int) ([]Result, error) {
	type job struct {
		workload string
		size     int64
	}
	var jobs []job
	for _, w := range workloads {
		switch w {
		case "ping":
			jobs = append(jobs, job{w, 0})
		case "echo":
			for _, s := range sizes {
				if s <= 0 || s > cppMaxEcho {
					return nil, fmt.Errorf("cpp-ezrpc: echo size %d out of range (1 B to %d MiB)", s, cppMaxEcho>>20)
				}
				jobs = append(jobs, job{w, s})
			}
		default:
			return nil, fmt.Errorf("cpp-ezrpc: unknown workload %q (ping or echo)", w)
		}
	}
	exe, err := buildCppPeer(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "capnshm-cpp-ezrpc-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	var results []Result
	for _, tr := range transports {
		bind, err := cppBind(tr, dir)
		if err != nil {
			return nil, err
		}
		srv, err := startCppPeer(ctx, exe, bind)
		if err != nil {
			return nil, fmt.Errorf("cpp-ezrpc-%s: %w", tr, err)
		}
		for _, j := range jobs {
			r, err := runCppClient(ctx, exe, srv.addr, j.workload, calls(j.workload, j.size), j.size)
			if err != nil {
				return nil, errors.Join(fmt.Errorf("cpp-ezrpc-%s: %w", tr, err), srv.stop())
			}
			r.Transport = "cpp-ezrpc-" + tr
			results = append(results, r)
		}
		if err := srv.stop(); err != nil {
			return nil, fmt.Errorf("cpp-ezrpc-%s: %w", tr, err)
		}
	}
	return results, nil
}

// cppBind is where the C++ server listens for a medium (unix or tcp): a
// socket in dir, or a free port on loopback.
func cppBind(medium, dir string) (string, error) {
	switch medium {
	case "unix":
		return "unix:" + filepath.Join(dir, "peer.sock"), nil
	case "tcp":
		return "127.0.0.1:0", nil
	}
	return "", fmt.Errorf("cpp-ezrpc: unknown transport %q (unix or tcp)", medium)
}

// cppMaxEcho is the largest echo the peer makes (its limit, see peer.c++).
const cppMaxEcho = 256 << 20

// cppFlags are g++'s flags for the peer, before pkg-config's.
var cppFlags = []string{"-std=c++14", "-O2", "-Wall"}

// buildCppPeer returns the path of the C++ peer, built for the installed
// Cap'n Proto: from a cache under os.UserCacheDir (capnshm/bench-cpp/HASH,
// the hash covering the peer's source, the schema, the tools' versions and
// the flags), or built there now with capnp compile -oc++, g++ and
// pkg-config capnp-rpc.
func buildCppPeer(ctx context.Context) (string, error) {
	if err := cppToolchain(); err != nil {
		return "", err
	}
	schema, err := echoSchema()
	if err != nil {
		return "", err
	}
	pkgFlags, err := output(ctx, "pkg-config", "--cflags", "--libs", "capnp-rpc")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, part := range [][]byte{cppPeerSource, schema, []byte(strings.Join(cppFlags, " ")), []byte(pkgFlags)} {
		fmt.Fprintf(h, "%d\n%s\n", len(part), part)
	}
	for _, cmd := range [][]string{{"capnp", "--version"}, {"g++", "--version"}, {"pkg-config", "--modversion", "capnp-rpc"}} {
		v, err := output(ctx, cmd[0], cmd[1:]...)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\n", v)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "capnshm", "bench-cpp", hex.EncodeToString(h.Sum(nil))[:16])
	exe := filepath.Join(dir, "cpp-ezrpc-peer")
	if fi, err := os.Stat(exe); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o100 != 0 {
		return exe, nil
	}

	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("cpp-ezrpc peer: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "build-")
	if err != nil {
		return "", fmt.Errorf("cpp-ezrpc peer: %w", err)
	}
	defer os.RemoveAll(tmp)
	for name, data := range map[string][]byte{"echo.capnp": schema, "peer.c++": cppPeerSource} {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			return "", fmt.Errorf("cpp-ezrpc peer: %w", err)
		}
	}
	if _, err := outputIn(ctx, tmp, "capnp", "compile", "-oc++", "echo.capnp"); err != nil {
		return "", err
	}
	args := append(append([]string{}, cppFlags...), "-I", ".", "-o", "cpp-ezrpc-peer", "peer.c++", "echo.capnp.c++")
	args = append(args, strings.Fields(pkgFlags)...)
	if _, err := outputIn(ctx, tmp, "g++", args...); err != nil {
		return "", err
	}
	// Another process may have built the same peer meanwhile: the rename
	// of a directory onto another fails then, and theirs is as good.
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(exe); serr != nil {
			return "", fmt.Errorf("cpp-ezrpc peer: %w", err)
		}
	}
	return exe, nil
}

// cppToolchain returns an error wrapping errNotMeasured that names what of
// the C++ toolchain is missing, or nil.
func cppToolchain() error {
	var missing []string
	for _, tool := range []string{"capnp", "g++", "pkg-config"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := exec.LookPath("pkg-config"); err == nil {
		if exec.Command("pkg-config", "--exists", "capnp-rpc").Run() != nil {
			missing = append(missing, "libcapnp-dev (pkg-config capnp-rpc)")
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: C++ EZ-RPC needs %s (Debian/Ubuntu: apt-get install -y capnproto libcapnp-dev g++ pkg-config)",
		errNotMeasured, strings.Join(missing, ", "))
}

// echoSchema returns the bench's schema (internal/echoproto/echo.capnp,
// found next to this file's source) without its Go annotations, so that it
// compiles without go.capnp. Annotations do not change any id.
func echoSchema() ([]byte, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return nil, fmt.Errorf("%w: C++ EZ-RPC: cannot locate the bench's source", errNotMeasured)
	}
	path := filepath.Join(filepath.Dir(file), "..", "internal", "echoproto", "echo.capnp")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: C++ EZ-RPC: the peer's schema is read from the source tree (built with -trimpath, or moved?): %w", errNotMeasured, err)
	}
	return stripGoAnnotations(b), nil
}

var (
	goImportLine = regexp.MustCompile(`(?m)^[ \t]*using[ \t]+Go[ \t]*=[ \t]*import[ \t]+"/go\.capnp"[ \t]*;[ \t]*\n?`)
	goAnnotLine  = regexp.MustCompile(`(?m)^[ \t]*\$Go\.\w+\("[^"\n]*"\)[ \t]*;[ \t]*\n?`)
	goAnnotation = regexp.MustCompile(`[ \t]*\$Go\.\w+(\("[^"\n]*"\))?`)
)

// stripGoAnnotations removes the import of go.capnp, file annotations of
// it (whole lines) and annotations of it on declarations.
func stripGoAnnotations(schema []byte) []byte {
	schema = goImportLine.ReplaceAll(schema, nil)
	schema = goAnnotLine.ReplaceAll(schema, nil)
	return goAnnotation.ReplaceAll(schema, nil)
}

// output runs a command and returns its standard output, trimmed; an error
// names the command and carries its standard error.
func output(ctx context.Context, name string, args ...string) (string, error) {
	return outputIn(ctx, "", name, args...)
}

func outputIn(ctx context.Context, dir, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cpp-ezrpc peer: %s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

// cppPeer is a running "peer server".
type cppPeer struct {
	addr   string // as EzRpcClient takes it: 127.0.0.1:PORT or unix:PATH
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan error
	stderr *lockedBuffer
	cancel context.CancelFunc
}

// startCppPeer starts the peer's server on bind and waits for its ready
// line.
func startCppPeer(ctx context.Context, exe, bind string) (*cppPeer, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, exe, "server", bind)
	cmd.WaitDelay = 5 * time.Second
	p := &cppPeer{cmd: cmd, exited: make(chan error, 1), stderr: new(lockedBuffer), cancel: cancel}
	cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		cancel()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("starting the C++ peer: %w", err)
	}
	lines := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- l
		io.Copy(io.Discard, stdout)
		p.exited <- cmd.Wait()
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	var line string
	select {
	case line = <-lines:
	case <-timer.C:
		p.kill()
		return nil, fmt.Errorf("the C++ peer printed no ready line within 30 s: %s", p.stderr)
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
	m := cppReady.FindStringSubmatch(line)
	if m == nil {
		p.kill()
		return nil, fmt.Errorf("the C++ peer's first line is %q, want \"listening on ADDR port N\": %s", line, p.stderr)
	}
	p.addr = bind
	if !strings.HasPrefix(bind, "unix:") {
		host, _, _ := strings.Cut(bind, ":")
		p.addr = host + ":" + m[1]
	}
	return p, nil
}

var cppReady = regexp.MustCompile(`^listening on \S+ port (\d+)\n$`)

// stop closes the server's stdin, on which it exits, and waits for it.
func (p *cppPeer) stop() error {
	defer p.cancel()
	p.stdin.Close()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case err := <-p.exited:
		if err != nil {
			return fmt.Errorf("the C++ peer's server: %w: %s", err, p.stderr)
		}
		return nil
	case <-timer.C:
		p.kill()
		return fmt.Errorf("the C++ peer's server did not exit within 10 s of its stdin closing: %s", p.stderr)
	}
}

func (p *cppPeer) kill() {
	p.cancel()
	<-p.exited
}

// cppLine is what "peer client" prints.
type cppLine struct {
	Workload string `json:"workload"`
	Size     int64  `json:"size"`
	Count    int64  `json:"count"`
	P50      int64  `json:"p50_ns"`
	P90      int64  `json:"p90_ns"`
	P99      int64  `json:"p99_ns"`
	P999     int64  `json:"p999_ns"`
	Max      int64  `json:"max_ns"`
	Mean     int64  `json:"mean_ns"`
}

// runCppClient runs "peer client" and checks what it printed.
func runCppClient(ctx context.Context, exe, addr, workload string, n int, size int64) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "client", addr, workload, strconv.Itoa(n), strconv.FormatInt(size, 10))
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	what := fmt.Sprintf("%s of %d B, %d calls", workload, size, n)
	if err != nil {
		return Result{}, fmt.Errorf("%s: the C++ client: %w: %s", what, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var l cppLine
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return Result{}, fmt.Errorf("%s: the C++ client printed %q: %w", what, out, err)
	}
	switch {
	case l.Workload != workload || l.Size != size || l.Count != int64(n):
		return Result{}, fmt.Errorf("%s: the C++ client measured %s of %d B, %d calls", what, l.Workload, l.Size, l.Count)
	case l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max || l.Mean <= 0:
		return Result{}, fmt.Errorf("%s: the C++ client's figures are inconsistent: %s", what, out)
	}
	r := Result{
		Workload: workload, Size: size, Clients: 1, Ops: l.Count,
		P50: l.P50, P90: l.P90, P99: l.P99, P999: l.P999, Max: l.Max, Mean: l.Mean,
		OpsPerSec: 1e9 / float64(l.Mean),
	}
	if workload == "echo" {
		r.MBps = float64(size) / (float64(l.Mean) / 1e9) / 1e6
	}
	return r, nil
}

// lockedBuffer is a bytes.Buffer safe for a process's stderr copier and a
// reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.b.String())
}
