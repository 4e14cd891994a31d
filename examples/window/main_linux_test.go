package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// modes of the loop to run the flood test in: Linux has one.
var modes = []struct {
	name        string
	interactive bool
}{{"epoll", false}}

// prepareDisplay starts Xvfb for the tests when there is no $DISPLAY and
// Xvfb is installed; it returns the function that stops it.
func prepareDisplay() (stop func()) {
	if os.Getenv("DISPLAY") != "" {
		return func() {}
	}
	path, err := exec.LookPath("Xvfb")
	if err != nil {
		return func() {}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return func() {}
	}
	// -displayfd: Xvfb picks a free display and writes its number on fd 3.
	cmd := exec.Command(path, "-displayfd", "3", "-screen", "0", "640x480x24", "-nolisten", "tcp")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		return func() {}
	}
	w.Close()
	num := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		num <- strings.TrimSpace(line)
	}()
	select {
	case n := <-num:
		if n != "" {
			os.Setenv("DISPLAY", ":"+n)
		}
	case <-time.After(20 * time.Second):
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
		r.Close()
	}
}

// Without an X display the program says so and exits with status 1.
func TestNoDisplay(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "CAPNSHM_WINDOW_MAIN=1", "CAPNSHM_WINDOW_ARGS=-addr "+privateAddr("nodisplay"), "DISPLAY=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("the program without a display: %v, want exit status 1 (stderr: %q)", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "no X display") {
		t.Errorf("stderr %q does not say there is no X display", stderr.String())
	}
	t.Setenv("DISPLAY", "")
	if w, err := openWindow("", "x"); !errors.Is(err, errNoDisplay) {
		if w != nil {
			w.close()
		}
		t.Errorf("openWindow without a display = %v, want errNoDisplay", err)
	}
}
