//go:build linux || windows

// Command blob sends a large blob from one process to another with
// streaming Cap'n Proto calls, first zero-copy over shared memory, then
// over a stream (a unix socket on Linux, a named pipe on Windows), and
// prints both throughputs and their ratio. The receiver is this program
// re-executed: it serves internal/echoproto's Echo on a shared-memory
// and a stream address (Linux: shm-abstract: and unix-abstract:; Windows:
// shm: and pipe:), and reads every byte it receives (a CRC-32C of the
// whole stream, in order), which the sender compares with its own.
//
//	go run ./examples/blob               # 1 GiB each way
//	go run ./examples/blob -quick        # 64 MiB, for CI
//	go run ./examples/blob -file big.iso # a real file, read straight into shared memory
//
// Each chunk is one push call (`push @4 (data :Data) -> stream`) whose data
// the sender writes in place, in its own shared pool; the receiver reads it
// there. The connection's flow limiter (rpc.Conn.FlowLimiter) keeps the
// bytes in flight within half of the sender's pool.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/schollz/progressbar/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

var (
	size       = flag.Int64("size", 1<<30, "bytes of generated data to send (ignored with -file)")
	chunk      = flag.Int("chunk", 1<<20, "bytes per push call")
	addr       = flag.String("addr", "", "shm: (or shm-abstract:) address the receiver listens on (default: a fresh name)")
	unixAddr   = flag.String("unix-addr", "", "address of the stream run: unix:, unix-abstract: or pipe: (default: a fresh "+streamScheme+" name)")
	file       = flag.String("file", "", "send this file instead of generated data")
	quick      = flag.Bool("quick", false, "send 64 MiB (for CI)")
	noProgress = flag.Bool("noprogress", false, "no progress bar")
	receive    = flag.Bool("receive", false, "internal: run as the receiver")
)

// castagnoli is CRC-32C, computed in hardware on amd64 and arm64.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func main() {
	flag.Parse()
	if *receive {
		if err := runReceiver(); err != nil {
			fmt.Fprintln(os.Stderr, "blob receiver:", err)
			os.Exit(1)
		}
		return
	}
	if *quick {
		*size = 64 << 20
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "blob:", err)
		os.Exit(1)
	}
}

// source is what the sender sends: generated data or a file.
type source struct {
	name  string
	total int64
	f     *os.File
	block []byte // generated data: a random block, stamped with each chunk's index
}

func openSource() (*source, error) {
	if *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &source{name: *file, total: fi.Size(), f: f}, nil
	}
	block := make([]byte, *chunk)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range block { // xorshift: incompressible, no crypto needed
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		block[i] = byte(x >> 32)
	}
	return &source{name: "generated data", total: *size, block: block}, nil
}

// fill writes the n bytes at offset off into b (in shared memory, on the
// shared-memory run): a file is read straight into it.
func (s *source) fill(b []byte, off int64) error {
	if s.f != nil {
		_, err := s.f.ReadAt(b, off)
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: shorter than %d bytes", s.name, s.total)
		}
		return err
	}
	copy(b, s.block)
	for i := 0; i < 8 && i < len(b); i++ { // each chunk differs: order and duplicates show in the CRC
		b[i] ^= byte(off >> (8 * i))
	}
	return nil
}

func (s *source) Close() {
	if s.f != nil {
		s.f.Close()
	}
}

func run() error {
	if *chunk <= 0 || *chunk >= 1<<29 {
		return fmt.Errorf("-chunk %d: want 1 byte up to, not including, 512 MiB (one Data holds less than 2^29 bytes)", *chunk)
	}
	if *addr == "" {
		*addr = fmt.Sprintf("%s:capnshm-blob-%d", shmScheme, os.Getpid())
	}
	if *unixAddr == "" {
		*unixAddr = fmt.Sprintf("%s:capnshm-blob-%d-stream", streamScheme, os.Getpid())
	}
	src, err := openSource()
	if err != nil {
		return err
	}
	defer src.Close()
	if src.total <= 0 {
		return fmt.Errorf("nothing to send (%d bytes)", src.total)
	}

	rcv, err := startReceiver()
	if err != nil {
		return err
	}
	defer rcv.stop()

	fmt.Printf("capnshm blob: %s, %s in %s chunks, to another process (pid %d)\n\n",
		src.name, mib(src.total), mib(int64(*chunk)), rcv.cmd.Process.Pid)
	shmRate, err := transfer(rcv, src, *addr, "shared memory")
	if err != nil {
		return fmt.Errorf("shared memory: %w", err)
	}
	sockRate, err := transfer(rcv, src, *unixAddr, streamLabel)
	if err != nil {
		return fmt.Errorf("%s: %w", streamLabel, err)
	}
	fmt.Printf("\nshared memory is %.1fx the %s's throughput (%.0f vs %.0f MiB/s)\n", shmRate/sockRate, streamLabel, shmRate, sockRate)
	return nil
}

func mib(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// transfer sends src to the receiver on address a, checks what it got, and
// returns the throughput in MiB/s.
func transfer(rcv *receiver, src *source, a, label string) (float64, error) {
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	opts := []rpc.Option{rpc.WithMaxMessage(maxMessage())}
	if strings.HasPrefix(a, "shm") {
		opts = append(opts, rpc.WithFallback(rpc.FallbackRequire))
	}
	conn, err := rpc.Dial(dctx, a, opts...)
	cancel()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	boot := echoproto.Echo(conn.Bootstrap(ctx))
	defer boot.Release()
	stream := boot.AddRef()
	defer stream.Release()
	stream.SetFlowLimiter(conn.FlowLimiter())

	var bar *progressbar.ProgressBar
	if !*noProgress {
		bar = newBar(src.total, label)
	}
	crc := uint32(0)
	var chunks uint64
	start := time.Now()
	for off := int64(0); off < src.total; off += int64(*chunk) {
		n := min(int64(*chunk), src.total-off)
		err := stream.Push(ctx, func(p echoproto.Echo_push_Params) error {
			ptr, b, err := echoproto.NewData(p.Segment(), int(n))
			if err != nil {
				return err
			}
			if err := src.fill(b, off); err != nil {
				return err
			}
			crc = crc32.Update(crc, castagnoli, b)
			return capnp.Struct(p).SetPtr(0, ptr)
		})
		if err != nil {
			return 0, err
		}
		chunks++
		if bar != nil {
			bar.Add64(n)
		}
	}
	if err := stream.WaitStreaming(); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	if bar != nil {
		bar.Finish()
	}
	st := conn.Stats()

	got, err := rcv.report()
	if err != nil {
		return 0, err
	}
	want := fmt.Sprintf("bytes=%d chunks=%d crc=%08x", src.total, chunks, crc)
	if got != want {
		return 0, fmt.Errorf("the receiver got %q, want %q", got, want)
	}
	rate := float64(src.total) / (1 << 20) / elapsed.Seconds()
	how := "stream transport"
	if conn.SharedMemory() {
		how = fmt.Sprintf("%d of %d messages by reference, %d bytes copied, %d on the socket, pool high water %s",
			st.SentByReference, st.MessagesSent, st.BytesCopied, st.SentOnSocket, mib(st.Pool.PoolHighWater))
	}
	fmt.Printf("%-13s %s in %v: %.0f MiB/s; receiver verified %d bytes, %d chunks, CRC-32C %08x (%s)\n",
		label, mib(src.total), elapsed.Round(time.Millisecond), rate, src.total, chunks, crc, how)
	return rate, nil
}

// newBar is progressbar.DefaultBytes (on stderr) in MiB rather than MB,
// like the rest of the output.
func newBar(total int64, label string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetDescription(fmt.Sprintf("%-13s", label)),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(10),
		progressbar.OptionThrottle(65*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }),
		progressbar.OptionFullWidth(),
		progressbar.OptionSetRenderBlankState(true),
	)
}

// maxMessage is the largest message either side accepts: a chunk and its
// call, with room (the stream transport's own default is 64 MiB).
func maxMessage() int64 { return max(2*int64(*chunk), 64<<20) }

// receiver is the receiving process.
type receiver struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startReceiver() (*receiver, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-receive", "-addr", *addr, "-unix-addr", *unixAddr, "-chunk", fmt.Sprint(*chunk))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &receiver{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	if line, err := r.line(); err != nil || line != "ready" {
		r.stop()
		return nil, fmt.Errorf("receiver did not start: %q %v", line, err)
	}
	return r, nil
}

func (r *receiver) line() (string, error) {
	if r.out.Scan() {
		return r.out.Text(), nil
	}
	if err := r.out.Err(); err != nil {
		return "", err
	}
	return "", io.ErrUnexpectedEOF
}

// report asks what the receiver got since the last report.
func (r *receiver) report() (string, error) {
	if _, err := fmt.Fprintln(r.stdin, "report"); err != nil {
		return "", err
	}
	return r.line()
}

func (r *receiver) stop() {
	r.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			fmt.Fprintln(os.Stderr, "blob: receiver:", err)
		}
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}
