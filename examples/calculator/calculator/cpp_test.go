package calculator_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/examples/calculator/calculator"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

// The C++ programs of ../cpp, built once per test binary by build.sh.
var cppBuild struct {
	once sync.Once
	dir  string
	err  error
}

// TestMain removes the C++ programs after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if cppBuild.dir != "" {
		os.RemoveAll(cppBuild.dir)
	}
	os.Exit(code)
}

// cppPrograms builds ../cpp (the C++ EZ-RPC client and server of the
// calculator) and returns their paths. Without the C++ toolchain it skips
// the test, or fails it under CAPNSHM_REQUIRE_CPP=1 (see requireCpp).
func cppPrograms(t *testing.T) (client, server string) {
	t.Helper()
	requireCpp(t)
	cppBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "calculator-cpp-")
		if err != nil {
			cppBuild.err = err
			return
		}
		cppBuild.dir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "sh", filepath.Join("..", "cpp", "build.sh"), dir).CombinedOutput()
		if err != nil {
			cppBuild.err = fmt.Errorf("building ../cpp: %v\n%s", err, out)
		}
	})
	if cppBuild.err != nil {
		t.Fatal(cppBuild.err)
	}
	return filepath.Join(cppBuild.dir, "calculator-client"), filepath.Join(cppBuild.dir, "calculator-server")
}

// requireCpp skips the test (or, with CAPNSHM_REQUIRE_CPP=1, fails it)
// unless the C++ toolchain and Cap'n Proto's C++ library are installed.
func requireCpp(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the C++ interop tests run on Linux (build.sh is a POSIX shell script)")
	}
	var missing []string
	for _, tool := range []string{"sh", "go", "capnp", "g++", "pkg-config"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := exec.LookPath("pkg-config"); err == nil {
		if err := exec.Command("pkg-config", "--exists", "capnp-rpc").Run(); err != nil {
			missing = append(missing, "the capnp-rpc library (pkg-config capnp-rpc)")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "C++ interop test needs " + strings.Join(missing, ", ") +
		" (Debian/Ubuntu: apt-get install -y capnproto libcapnp-dev g++ pkg-config)"
	if os.Getenv("CAPNSHM_REQUIRE_CPP") == "1" {
		t.Fatal(msg + "; CAPNSHM_REQUIRE_CPP=1 makes this a failure")
	}
	t.Skip(msg)
}

// TestCppClient runs the repository's C++ EZ-RPC client (../cpp/client.c++)
// against the Go server over TCP, over a unix socket, and as a plain Cap'n
// Proto client on a shm: address (where the server falls back to the
// stream transport), and requires every answer. The client runs in the
// official sample client's order: promises passed on at once, the same one
// in several messages, Finish sent right after the pipelined calls.
func TestCppClient(t *testing.T) {
	client, _ := cppPrograms(t)
	dir := peertest.TempDir(t)
	for _, c := range []struct {
		name, listen string
		endpoint     func(rpc.Addr) string // the address as EzRpcClient takes it
	}{
		{"tcp", "tcp:127.0.0.1:0", func(a rpc.Addr) string { return a.Endpoint }},
		{"unix", "unix:" + filepath.Join(dir, "unix.sock"), func(a rpc.Addr) string { return "unix:" + a.Endpoint }},
		{"shm-plain", "shm:" + filepath.Join(dir, "shm.sock"), func(a rpc.Addr) string { return "unix:" + a.Endpoint }},
	} {
		t.Run(c.name, func(t *testing.T) { runCppClient(t, client, c.listen, c.endpoint) })
	}
}

// runCppClient serves the calculator on listen and runs the C++ client
// against it.
func runCppClient(t *testing.T, client, listen string, endpointOf func(rpc.Addr) string) {
	srv := serve(t, listen)
	args := []string{endpointOf(srv.Addr().(rpc.Addr))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, client, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("C++ client %v:\n%s", args, out)
	if ctx.Err() != nil {
		t.Fatal("the C++ client did not finish within 30 s")
	}
	if err != nil {
		t.Fatalf("C++ client: %v", err)
	}
	checkCppOutput(t, out)
}

// checkCppOutput checks that the C++ client printed every answer of
// RunChecks and RunTailCallCheck, and PASS.
func checkCppOutput(t *testing.T, out []byte) {
	t.Helper()
	for _, w := range append(append([]calculator.Result{}, want...), wantTail...) {
		if line := fmt.Sprintf("  %s = %g\n", w.Name, w.Want); !strings.Contains(string(out), line) {
			t.Errorf("C++ client output lacks %q", strings.TrimSpace(line))
		}
	}
	if !strings.HasSuffix(string(out), "PASS\n") {
		t.Error("C++ client did not print PASS")
	}
}

// cppServer is a running ../cpp/server.c++.
type cppServer struct {
	addr   string // for rpc.Dial: tcp:127.0.0.1:PORT or unix:/path
	stderr *bytes.Buffer
}

// ready is the line the C++ server prints once it listens.
var ready = regexp.MustCompile(`^listening on (\S+) port (\d+)\n$`)

// startCppServer starts the C++ server on bind (as EzRpcServer takes it:
// 127.0.0.1:0 or unix:/path) and waits for its ready line. The server
// exits when the test closes its stdin, at the end of the test; it must
// exit cleanly.
func startCppServer(t *testing.T, bin, bind string) *cppServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--watch-stdin", bind)
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &cppServer{stderr: new(bytes.Buffer)}
	cmd.Stderr = s.stderr // read only after Wait
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		stdin.Close()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("C++ server: %v\n%s", err, s.stderr)
			}
		case <-time.After(10 * time.Second):
			cancel()
			<-exited
			t.Errorf("the C++ server did not exit within 10 s of its stdin closing\n%s", s.stderr)
		}
		cancel()
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
		io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	var l string
	select {
	case l = <-line:
	case <-time.After(30 * time.Second):
		t.Fatal("the C++ server printed no ready line within 30 s")
	}
	m := ready.FindStringSubmatch(l)
	if m == nil {
		t.Fatalf("the C++ server's first line is %q, want \"listening on ADDR port N\"", l)
	}
	if strings.HasPrefix(bind, "unix:") {
		s.addr = bind
	} else {
		host, _, err := net.SplitHostPort(bind)
		if err != nil {
			t.Fatal(err)
		}
		s.addr = "tcp:" + net.JoinHostPort(host, m[2])
	}
	return s
}

// cppServerCase is an address the C++ server is tested on.
type cppServerCase struct {
	name, bind string
	// shm: the Go client dials shm:PATH for the server's unix:PATH (and
	// falls back to the stream transport: the C++ server refuses HELLO).
	shm bool
}

// dial returns the address the Go client dials for s.
func (c cppServerCase) dial(s *cppServer) string {
	if c.shm {
		return "shm:" + strings.TrimPrefix(s.addr, "unix:")
	}
	return s.addr
}

// cppServerCases are the addresses the C++ server is tested on.
func cppServerCases(t *testing.T) []cppServerCase {
	dir := peertest.TempDir(t)
	return []cppServerCase{
		{"tcp", "127.0.0.1:0", false},
		{"unix", "unix:" + filepath.Join(dir, "cpp.sock"), false},
		{"shm-fallback", "unix:" + filepath.Join(dir, "cpp-shm.sock"), true},
	}
}

// TestCppServer runs the Go client's checks (RunChecks: a literal,
// operators, pipelined evaluations, defined functions, a callback) over
// rpc.Dial against the repository's C++ EZ-RPC server
// (../cpp/server.c++), over TCP and over a unix socket, and on a shm:
// address for the server's socket, where the Go client falls back to the
// stream transport.
func TestCppServer(t *testing.T) {
	_, server := cppPrograms(t)
	for _, c := range cppServerCases(t) {
		t.Run(c.name, func(t *testing.T) {
			s := startCppServer(t, server, c.bind)
			if err := check(c.dial(s), false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCppServerTailCall runs RunTailCallCheck against the C++ server, which
// answers t(2, 10) = pow(2, 10), pow being the Go client's, with a tail
// call (see ../cpp/server.c++). The connection runs through a tap that
// decodes each message: the test also requires that the C++ server sent
// the forwarded Call with sendResultsTo.yourself and a
// Return.takeFromOtherQuestion, so that it shows the check meets a real
// tail call.
func TestCppServerTailCall(t *testing.T) {
	_, server := cppPrograms(t)
	for _, c := range cppServerCases(t) {
		if c.shm {
			continue // the same stream as on unix:, after a refused HELLO
		}
		t.Run(c.name, func(t *testing.T) {
			s := startCppServer(t, server, c.bind)
			tp := startTap(t, s.addr)
			err := checkTail(tp.addr, false)
			fromServer, fromClient := tp.stop()
			t.Logf("the C++ server sent %v; the Go client sent %v", fromServer, fromClient)
			for _, kind := range []string{"Call.sendResultsTo.yourself", "Return.takeFromOtherQuestion"} {
				if fromServer[kind] == 0 {
					t.Errorf("the C++ server sent no %s: the check met no tail call", kind)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if fromClient["Return.resultsSentElsewhere"] == 0 {
				t.Error("the Go client sent no Return.resultsSentElsewhere: it did not answer the forwarded call as the tail call's target")
			}
		})
	}
}

// TestCppClientAndServer runs the C++ client against the C++ server, through
// the tap: Cap'n Proto's C++ implementation on both sides shows that the C++
// server's tail call is right (the client gets t(2, 10) from its own pow)
// and that the tail-call check's answers are what the reference gives.
func TestCppClientAndServer(t *testing.T) {
	client, server := cppPrograms(t)
	for _, c := range cppServerCases(t) {
		if c.shm {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			s := startCppServer(t, server, c.bind)
			tp := startTap(t, s.addr)
			endpoint := strings.TrimPrefix(tp.addr, "tcp:") // as EzRpcClient takes it

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, client, endpoint)
			cmd.WaitDelay = 5 * time.Second
			out, err := cmd.CombinedOutput()
			fromServer, fromClient := tp.stop()
			t.Logf("C++ client against the C++ server:\n%s\nthe server sent %v; the client sent %v", out, fromServer, fromClient)
			if ctx.Err() != nil {
				t.Fatal("the C++ client did not finish within 30 s")
			}
			if err != nil {
				t.Fatalf("C++ client: %v", err)
			}
			checkCppOutput(t, out)
			for _, kind := range []string{"Call.sendResultsTo.yourself", "Return.takeFromOtherQuestion"} {
				if fromServer[kind] == 0 {
					t.Errorf("the C++ server sent no %s: no tail call", kind)
				}
			}
			if fromClient["Return.resultsSentElsewhere"] == 0 {
				t.Error("the C++ client sent no Return.resultsSentElsewhere: it did not answer the forwarded call as the tail call's target")
			}
		})
	}
}

// tap forwards one connection to a server and decodes the Cap'n Proto
// stream in each direction, counting the RPC messages by kind.
type tap struct {
	addr string // what the client dials
	ln   net.Listener
	wg   sync.WaitGroup

	mu         sync.Mutex
	conns      []net.Conn
	fromServer map[string]int
	fromClient map[string]int
}

// startTap listens where the client is to dial (on the server's network)
// and forwards to server (an rpc address: tcp:host:port or unix:/path).
func startTap(t *testing.T, server string) *tap {
	t.Helper()
	a, err := rpc.ParseAddr(server)
	if err != nil {
		t.Fatal(err)
	}
	network, target := a.Net()
	listen := "127.0.0.1:0"
	if network == "unix" {
		listen = filepath.Join(peertest.TempDir(t), "tap.sock")
	}
	ln, err := net.Listen(network, listen)
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, fromServer: map[string]int{}, fromClient: map[string]int{}}
	if network == "unix" {
		tp.addr = "unix:" + listen
	} else {
		tp.addr = "tcp:" + ln.Addr().String()
	}
	tp.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial(network, target)
			if err != nil {
				t.Errorf("tap: dialling the server: %v", err)
				c.Close()
				continue
			}
			tp.mu.Lock()
			tp.conns = append(tp.conns, c, s)
			tp.mu.Unlock()
			tp.wg.Go(func() { tp.pump(s, c, tp.fromClient) })
			tp.wg.Go(func() { tp.pump(c, s, tp.fromServer) })
		}
	})
	t.Cleanup(func() { tp.stop() })
	return tp
}

// pump copies src to dst, decoding what passes into counts. When src ends
// both connections close.
func (tp *tap) pump(dst, src net.Conn, counts map[string]int) {
	defer dst.Close()
	defer src.Close()
	dec := capnp.NewDecoder(io.TeeReader(src, dst))
	dec.MaxMessageSize = 1 << 30
	for {
		msg, err := dec.Decode()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				tp.count(counts, "undecodable: "+err.Error())
			}
			io.Copy(dst, src) // whatever follows, undecoded
			return
		}
		tp.count(counts, kind(msg))
	}
}

func (tp *tap) count(counts map[string]int, k string) {
	tp.mu.Lock()
	counts[k]++
	tp.mu.Unlock()
}

// kind names an RPC message: its type, and for a Call where its results
// go, for a Return which variant it is.
func kind(msg *capnp.Message) string {
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil {
		return "not an rpc.Message: " + err.Error()
	}
	switch m.Which() {
	case rpccp.Message_Which_call:
		c, err := m.Call()
		if err != nil {
			return "Call: " + err.Error()
		}
		return "Call.sendResultsTo." + c.SendResultsTo().Which().String()
	case rpccp.Message_Which_return:
		r, err := m.Return()
		if err != nil {
			return "Return: " + err.Error()
		}
		return "Return." + r.Which().String()
	case rpccp.Message_Which_abort:
		e, err := m.Abort()
		if err != nil {
			return "Abort: " + err.Error()
		}
		reason, _ := e.Reason()
		return fmt.Sprintf("Abort (%q)", reason)
	}
	w := m.Which().String()
	return strings.ToUpper(w[:1]) + w[1:]
}

// stop closes the tap and returns what each side sent.
func (tp *tap) stop() (fromServer, fromClient map[string]int) {
	tp.ln.Close()
	tp.mu.Lock()
	for _, c := range tp.conns {
		c.Close()
	}
	tp.mu.Unlock()
	tp.wg.Wait()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return maps.Clone(tp.fromServer), maps.Clone(tp.fromClient)
}
