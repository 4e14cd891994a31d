//go:build linux

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Machine is the host a run measured, for the report's head.
type Machine struct {
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// CPUModel is /proc/cpuinfo's first "model name" (empty if it has
	// none).
	CPUModel string `json:"cpu_model,omitempty"`
	// Kernel is uname's system, release and machine.
	Kernel string `json:"kernel,omitempty"`
	Go     string `json:"go"`
}

// thisMachine describes the machine the bench runs on.
func thisMachine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(b)
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = strings.Join([]string{unix.ByteSliceToString(u.Sysname[:]), unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:])}, " ")
	}
	return m
}

// cpuModel returns the first "model name" of /proc/cpuinfo's text, or
// the first "Hardware" or "cpu model" line (some arm and mips kernels
// give only those), or "".
func cpuModel(cpuinfo []byte) string {
	found := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.Join(strings.Fields(v), " ")
		if _, seen := found[k]; !seen && v != "" {
			found[k] = v
		}
	}
	for _, k := range []string{"model name", "Hardware", "cpu model"} {
		if v := found[k]; v != "" {
			return v
		}
	}
	return ""
}

// String is the machine in one line.
func (m Machine) String() string {
	model := m.CPUModel
	if model == "" {
		model = "CPU model unknown"
	}
	kernel := m.Kernel
	if kernel == "" {
		kernel = m.OS + " (kernel unknown)"
	}
	return fmt.Sprintf("%d CPUs (GOMAXPROCS %d), %s; %s; %s %s/%s", m.CPUs, m.GOMAXPROCS, model, kernel, m.Go, m.OS, m.Arch)
}
