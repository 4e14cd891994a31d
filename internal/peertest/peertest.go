// Package peertest runs a test binary's peer processes: a test re-executes
// its own binary, which runs a registered peer function instead of the tests,
// and hands it operating-system handles (file descriptors on Linux, handles on
// Windows) the way the real protocol would hand them to another process.
//
// A package that uses it calls Main from TestMain and registers its peers in
// init functions:
//
//	func init() { peertest.Register("echo", echoPeer) }
//	func TestMain(m *testing.M) { peertest.Main(m) }
//
//	p := peertest.Start(t, "echo", []uintptr{uintptr(fd)}, "arg")
//	// the child: func echoPeer(args []string) int { hs := peertest.Handles(); ... }
//
// The parent and the peer talk over the peer's stdin and stdout (Send, Expect)
// for coordination; the data under test travels through the handles.
package peertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/child"
)

const (
	envName = "CAPNSHM_PEERTEST_NAME"
	envArgs = "CAPNSHM_PEERTEST_ARGS"
	argSep  = "\x1f"
)

var (
	mu    sync.Mutex
	peers = map[string]func(args []string) int{}
)

// Register makes fn runnable as the peer called name. fn's return value is
// the peer process's exit code. Call it from an init function.
func Register(name string, fn func(args []string) int) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := peers[name]; dup {
		panic("peertest: peer registered twice: " + name)
	}
	peers[name] = fn
}

// IsPeer reports whether this process was started as a peer.
func IsPeer() bool { return os.Getenv(envName) != "" }

// Main runs the registered peer and exits if this process is one; otherwise
// it runs the tests. Call it from TestMain.
func Main(m *testing.M) {
	if name := os.Getenv(envName); name != "" {
		mu.Lock()
		fn := peers[name]
		mu.Unlock()
		if fn == nil {
			fmt.Fprintf(os.Stderr, "peertest: no peer registered as %q\n", name)
			os.Exit(97)
		}
		var args []string
		if a := os.Getenv(envArgs); a != "" {
			args = strings.Split(a, argSep)
		}
		os.Exit(fn(args))
	}
	os.Exit(m.Run())
}

// Handles returns, in a peer, the handles its parent passed to Start, in the
// same order, as valid handle values in this process.
func Handles() []uintptr { return child.Handles() }

// Peer is a running peer process.
type Peer struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	done   chan struct{}
	err    error // exit status, valid after done is closed
	stderr *strings.Builder
}

// Start re-executes the test binary as the peer called name, passing it the
// handles (which stay open in the parent) and args. The peer is killed and
// reaped when the test ends.
func Start(t testing.TB, name string, handles []uintptr, args ...string) *Peer {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	cmd, started, err := child.Command(exe, []string{"-test.run=^$"}, handles)
	if err != nil {
		t.Fatalf("peertest: passing handles: %v", err)
	}
	cmd.Env = append(cmd.Env, envName+"="+name, envArgs+"="+strings.Join(args, argSep))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &Peer{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{}), stderr: &strings.Builder{}}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	err = cmd.Start()
	started()
	if err != nil {
		t.Fatalf("peertest: starting peer %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// TakeHandle duplicates the handle h of the peer process into this one, for
// handles that flow from the peer to the test. The caller owns the result.
func (p *Peer) TakeHandle(h uintptr) (uintptr, error) { return child.Take(p.Pid(), h) }

// ReceiveHandle waits for the next line of the peer, a handle of its own it
// reported with SayHandle, and duplicates that handle into this process. The
// test fails if it cannot; the caller owns the result.
func (p *Peer) ReceiveHandle(ctx context.Context) uintptr {
	p.t.Helper()
	line, err := p.Line(ctx)
	if err != nil {
		p.t.Fatalf("peertest: %v", err)
	}
	v, err := strconv.ParseUint(line, 10, 64)
	if err != nil {
		p.t.Fatalf("peertest: peer said %q, want a handle (SayHandle)", line)
	}
	h, err := p.TakeHandle(uintptr(v))
	if err != nil {
		p.t.Fatalf("peertest: taking the peer's handle %d: %v", v, err)
	}
	return h
}

// Pid returns the peer's process id.
func (p *Peer) Pid() int { return p.cmd.Process.Pid }

// Process returns the peer's process.
func (p *Peer) Process() *os.Process { return p.cmd.Process }

// Send writes one line to the peer's stdin.
func (p *Peer) Send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("peertest: writing to peer: %v (stderr: %s)", err, p.Stderr())
	}
}

// Line waits for the next line the peer writes to stdout.
func (p *Peer) Line(ctx context.Context) (string, error) {
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			return "", fmt.Errorf("peer exited (%v) before writing a line; stderr: %s", p.err, p.Stderr())
		}
		return l, nil
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for a line from the peer: %w; stderr: %s", ctx.Err(), p.Stderr())
	}
}

// Expect waits up to a generous bound for the peer's next line and fails the
// test unless it equals want.
func (p *Peer) Expect(want string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got, err := p.Line(ctx)
	if err != nil {
		p.t.Fatalf("peertest: %v", err)
	}
	if got != want {
		p.t.Fatalf("peertest: peer said %q, want %q (stderr: %s)", got, want, p.Stderr())
	}
}

// CloseStdin closes the peer's stdin; peers that read commands see EOF.
func (p *Peer) CloseStdin() { _ = p.stdin.Close() }

// Wait waits for the peer to exit and returns its exit error (nil for
// status 0).
func (p *Peer) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WaitOK waits for the peer to exit and fails the test unless it exits 0.
func (p *Peer) WaitOK() {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		p.t.Fatalf("peertest: peer failed: %v; stderr: %s", err, p.Stderr())
	}
}

// Kill kills the peer at once (SIGKILL on Linux) and waits for it to exit.
func (p *Peer) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stderr returns what the peer has written to stderr so far.
func (p *Peer) Stderr() string {
	lw := p.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return p.stderr.String()
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Stdin returns a line scanner over the peer's stdin, for use inside a peer.
func Stdin() *bufio.Scanner { return bufio.NewScanner(os.Stdin) }

// Say writes one line to stdout, for use inside a peer.
func Say(format string, a ...any) { fmt.Fprintf(os.Stdout, format+"\n", a...) }

// SayHandle reports, inside a peer, a handle of this process for the test
// to take with ReceiveHandle.
func SayHandle(h uintptr) { Say("%d", h) }

// Fail writes a message to stderr and returns exit code 1, for use inside a
// peer: return peertest.Fail("...").
func Fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	return 1
}

// TempDir returns a new temporary directory removed when the test ends. Unlike
// t.TempDir it removes files one by one, which also works under Wine, whose
// os.RemoveAll fails.
func TempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "capnshm-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeTree(d); err != nil {
			t.Errorf("peertest: removing %s: %v", d, err)
		}
	})
	return d
}

func removeTree(d string) error {
	ents, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := d + string(os.PathSeparator) + e.Name()
		if e.IsDir() {
			errs = append(errs, removeTree(p))
			continue
		}
		_ = os.Chmod(p, 0o600)
		errs = append(errs, os.Remove(p))
	}
	errs = append(errs, os.Remove(d))
	return errors.Join(errs...)
}
